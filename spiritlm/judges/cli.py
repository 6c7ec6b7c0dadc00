"""``spiritlm eval judges``: a thin command over :func:`spiritlm.judges.train.train_judges`.

The command keeps its place among ``spiritlm eval``'s (the evaluations are what the judges are
for; :mod:`spiritlm.evals.cli` lists it), its code lives with the judges.
"""

from __future__ import annotations

from dataclasses import replace

from jsonargparse.typing import ClosedUnitInterval, NonNegativeInt, PositiveInt


def _check_inputs(manifest: str, units: str | None) -> dict[str, dict] | None:
    """Reads the manifest and the units (a bad line named, ``path:line``) before the seconds of torch imports."""
    from spiritlm.corpus.manifest import ManifestError, read_manifest
    from spiritlm.errors import UserError
    from spiritlm.units_jsonl import load_units

    try:
        read_manifest(manifest)
    except ManifestError as e:
        raise UserError(f"{e} (--manifest)") from None
    return None if units is None else load_units(units)


def judges(
    manifest: str,
    out: str,
    seed: int = 0,
    preset: str = "tiny",
    asr_steps: PositiveInt | None = None,
    asr_batch_size: PositiveInt | None = None,
    max_asr_train: NonNegativeInt | None = None,
    which: list[str] = ["asr", "text-sentiment", "speech-sentiment"],  # noqa: B006 (jsonargparse reads the default)
    vocoder: str | None = None,
    units: str | None = None,
    vocoded_fraction: ClosedUnitInterval = 0.0,
    threads: NonNegativeInt = 0,
    progress: bool = True,
    overwrite: bool = False,
) -> None:
    """Train the judges (CTC ASR, text and speech sentiment) on a manifest's train split; score them on its test split.

    Example: spiritlm eval judges --manifest demo_out/corpus/manifest.jsonl --out demo_out/judges --asr_steps 800

    Writes OUT/asr/, OUT/text_sentiment/, OUT/speech_sentiment/ and OUT/judges_metrics.json (each
    judge's test CER or accuracy with the majority-class rate), and prints one line per judge.
    A judge already trained in OUT is refused unless --overwrite true; each judge folder appears
    whole or not at all, so an interrupted run is simply rerun (finished judges kept, see --which).

    Args:
        manifest: corpus manifest with train and test splits (sentiment labels for the sentiment judges).
        out: output folder.
        seed: seed of initialisation, batching and masking.
        preset: the judges' recipe: a packaged name (tiny: recipes/configs/judges-tiny.yaml) or a
            YAML file of spiritlm.judges.train.JudgesConfig's fields.
        asr_steps: optimizer steps of the ASR judge (default: the preset's).
        asr_batch_size: utterances per ASR batch (default: the preset's).
        max_asr_train: cap on ASR training utterances, 0: the whole train split (default: the preset's).
        which: judges to train: any of asr, text-sentiment, speech-sentiment.
        vocoder: a vocoder folder: the judges are also scored on its resynthesis of the test split (needs --units).
        units: Meta units JSONL of the manifest's audio (for --vocoder).
        vocoded_fraction: this fraction of the ASR's train utterances is added again as vocoder resyntheses.
        threads: CPU threads of torch, BLAS and OpenMP (0: leave them as they are).
        progress: show a progress bar.
        overwrite: retrain (replace) judges of --which that OUT already holds.
    """
    from spiritlm.errors import UserError
    from spiritlm.judges import JUDGE_DIRS, read_judges_recipe

    # every flag and file is checked before the seconds of torch imports of the judges module
    unit_rows = _check_inputs(manifest, units)
    read_judges_recipe(preset)
    unknown = sorted(set(which) - set(JUDGE_DIRS))
    if unknown:
        raise UserError(f"unknown judges {unknown} (choose from {', '.join(JUDGE_DIRS)}) (--which)")
    if (vocoder is None) != (units is None):
        raise UserError("--vocoder and --units go together (the judges hear the vocoder's resynthesis of the units)")
    if vocoded_fraction > 0 and vocoder is None:
        raise UserError("--vocoded_fraction needs --vocoder and --units")

    from spiritlm.corpus.manifest import ManifestError
    from spiritlm.judges.train import judges_preset, train_judges
    from spiritlm.numerics import threads as pinned_threads

    cfg = judges_preset(preset)
    given = {"steps": asr_steps, "batch_size": asr_batch_size}
    cfg = replace(cfg, asr_train=replace(cfg.asr_train, **{k: v for k, v in given.items() if v is not None}),
                  max_asr_train=cfg.max_asr_train if max_asr_train is None else max_asr_train)
    voc = None
    if vocoder is not None:
        from spiritlm.vocoder import Vocoder

        voc = Vocoder.from_pretrained(vocoder)
    try:
        with pinned_threads(threads):
            train_judges(manifest, out, seed=seed, cfg=cfg, which=tuple(which), vocoder=voc, units=unit_rows,
                         vocoded_fraction=vocoded_fraction, progress=progress, overwrite=overwrite)
    except ManifestError as e:
        raise UserError(f"{e} (--manifest)") from None
