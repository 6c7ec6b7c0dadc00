"""spiritlm: interleaved spoken and written language models, trainable end to end.

Stages (one folder each, see README.md):

- ``spiritlm.formats``     token strings and unit dicts (Meta's Spirit LM formats)
- ``spiritlm.audio``       audio loading and validation
- ``spiritlm.corpus``      the synthetic aligned speech-text corpus and manifests
- ``spiritlm.tokenizers``  speech tokenizers: HuBERT units, pitch VQ-VAE, style tokens
- ``spiritlm.vocoder``     unit HiFi-GAN with duration predictor
- ``spiritlm.judges``      ASR and sentiment judges of generated speech and text
- ``spiritlm.evals``       few-shot and expressivity evaluations (tasks only)
- ``spiritlm.recipes``     launchers, YAML configs, the demo and its report
"""

__version__ = "0.1.0"


def _map_stage_folders() -> None:
    """Imports ``spiritlm.<stage>`` from the top-level stage folders of a source checkout.

    The design card keeps ``tokenizers/``, ``vocoder/``, ``recipes/`` and ``evals/`` at the top of
    the repository, so every file has one path on disk (no symlinks: grep, IDEs and structure
    tools see each file once). A built wheel copies them under ``spiritlm/`` (setup.py) and this
    finder is not installed. setuptools' editable finder cannot do this alone: it maps only stage
    folders with an ``__init__.py``, and ``tokenizers/`` must not have one, or ``import tokenizers``
    run from the repository root would shadow Hugging Face's package.
    """
    import importlib.machinery
    import importlib.util
    import sys
    from pathlib import Path

    package = Path(__file__).resolve().parent
    folders = {f"{__name__}.{stage}": package.parent / stage for stage in ("tokenizers", "vocoder", "recipes", "evals")}
    folders = {name: path for name, path in folders.items() if path.is_dir() and not (package / path.name).exists()}
    if not folders:
        return

    class StageFolderFinder:
        """A meta-path finder for exactly the stage packages named in ``folders``."""

        @staticmethod
        def find_spec(fullname, path=None, target=None):
            folder = folders.get(fullname)
            if folder is None:
                return None
            init = folder / "__init__.py"
            if init.exists():
                return importlib.util.spec_from_file_location(fullname, init, submodule_search_locations=[str(folder)])
            spec = importlib.machinery.ModuleSpec(fullname, None, is_package=True)  # a namespace package
            spec.submodule_search_locations = [str(folder)]
            return spec

    if not any(getattr(f, "__name__", "") == "StageFolderFinder" for f in sys.meta_path):
        sys.meta_path.insert(0, StageFolderFinder)


_map_stage_folders()
del _map_stage_folders
