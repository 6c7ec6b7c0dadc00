"""Package discovery for the repository layout of docs/architecture.md.

The stage folders ``tokenizers/``, ``vocoder/``, ``recipes/`` and ``evals/`` sit at the top of the
repository but install as ``spiritlm.tokenizers``, ``spiritlm.vocoder`` ... . They have no
``__init__.py`` on purpose: a regular package named ``tokenizers`` at the repository root would
shadow Hugging Face's ``tokenizers`` whenever Python runs from the root. A regular install copies
each folder under ``spiritlm/``; in a checkout or an editable install, ``spiritlm/__init__.py``
maps the four names to the top-level folders, so every file has exactly one path on disk.
"""

from setuptools import find_namespace_packages, find_packages, setup

STAGE_FOLDERS = ("tokenizers", "vocoder", "recipes", "evals")

packages = [p for p in find_packages(include=["spiritlm", "spiritlm.*"])
            if p.split(".")[1:2] not in ([s] for s in STAGE_FOLDERS)]
package_dir = {"spiritlm": "spiritlm"}
for stage in STAGE_FOLDERS:
    package_dir[f"spiritlm.{stage}"] = stage
    packages.append(f"spiritlm.{stage}")
    packages += [f"spiritlm.{stage}.{sub}" for sub in find_namespace_packages(where=stage)
                 if "__pycache__" not in sub]

setup(
    packages=packages,
    package_dir=package_dir,
    package_data={"spiritlm.recipes": ["configs/*.yaml", "slurm/*.slurm", "launch/*.sh"], "spiritlm": ["py.typed", "serve/static/*.html"]},
)
