"""``spiritlm eval <task>``: thin command-line wrappers over the ``run_<task>`` APIs of :mod:`spiritlm.evals`.

Each command reads and checks its files, builds the task's inputs and config (its settings flags
are the config's fields: :func:`spiritlm.cli.flags_from`) and calls ``run_<task>(model, inputs, config, out)``.
"""

from __future__ import annotations

from jsonargparse.typing import NonNegativeInt

from spiritlm.cli import flags_from
from spiritlm.evals.asr import AsrConfig, run_asr  # light modules (numpy): their configs are the commands' flags
from spiritlm.evals.common import ManifestInputs
from spiritlm.evals.ic import IcConfig, run_ic
from spiritlm.evals.zeroshot import ZeroshotConfig, ZeroshotInputs, run_zeroshot


def _model(model: str, vocoder: str | None, speech_tokenizer: str | None, device: str):
    from spiritlm.evals.common import load_eval_model

    return load_eval_model(model, vocoder=vocoder, speech_tokenizer=speech_tokenizer, device=device)


def _check_inputs(manifest: str | None, units: str | None = None, split: str | None = None) -> None:
    """Reads the manifest (and checks the units file) before the model loads, so a bad file fails first."""
    from spiritlm.evals.common import load_manifest_items
    from spiritlm.units_jsonl import load_units

    if manifest is not None:
        load_manifest_items(manifest, split)
    if units is not None:
        load_units(units)  # a torn or bad line is named (path:line) before the model loads


def _check_units_match(manifest: str, units: str) -> None:
    """Units of another corpus whose ids overlap the manifest's are refused, naming both files (before the model loads)."""
    from spiritlm.evals.common import check_units_match, load_manifest_items
    from spiritlm.units_jsonl import load_units

    check_units_match(load_manifest_items(manifest), load_units(units), manifest, units)


def _check_out(out: str, overwrite: bool) -> None:
    from spiritlm.evals.common import check_eval_output

    check_eval_output(out, overwrite)


def _check_paths(model: str, vocoder: str | None, speech_tokenizer: str | None) -> None:
    from spiritlm.evals.common import check_model_paths

    check_model_paths(model, vocoder=vocoder, speech_tokenizer=speech_tokenizer)


@flags_from(AsrConfig, "shots", "seed", "split", "shot_split", "max_items", "batch_size", "max_new_tokens")
def asr(
    model: str,
    manifest: str,
    units: str,
    out: str,
    vocoder: str | None = None,
    speech_tokenizer: str | None = None,
    device: str = "cpu",
    threads: NonNegativeInt = 0,
    overwrite: bool = False,
    **settings,
) -> None:
    """Few-shot ASR: [Speech]<units>[Text]<transcript> × k, then the target; WER and CER (jiwer).

    Example: spiritlm eval asr --model demo_out/lm/tiny-interleaved --manifest demo_out/corpus/manifest.jsonl
    --units demo_out/units.jsonl --out demo_out/evals/asr --shots 10

    Args:
        model: Hugging Face LLaMA folder, `spiritlm train` run folder or checkpoint folder.
        manifest: manifest JSONL (text, split).
        units: Meta units JSONL of the manifest's audio (`spiritlm tokenize`).
        out: output folder (metrics.json, predictions.jsonl).
        vocoder: vocoder folder (unused by asr; accepted so every task takes the same flags).
        speech_tokenizer: speech tokenizer folder (unused by asr: inputs are units).
        device: cpu or cuda.
        threads: CPU threads of torch, BLAS and OpenMP (0: leave them as they are).
        overwrite: replace a finished evaluation in OUT (one holding metrics.json).
    """
    _check_out(out, overwrite)
    _check_inputs(manifest, units, settings["split"])
    _check_paths(model, vocoder, speech_tokenizer)
    _check_units_match(manifest, units)
    from spiritlm.numerics import threads as pinned_threads

    with pinned_threads(threads):
        run_asr(_model(model, vocoder, speech_tokenizer, device), ManifestInputs(manifest, units), AsrConfig(**settings), out)


@flags_from(IcConfig, "shots", "seed", "split", "shot_split", "max_items", "batch_size", "generation")
def ic(
    model: str,
    manifest: str,
    units: str,
    out: str,
    vocoder: str | None = None,
    speech_tokenizer: str | None = None,
    device: str = "cpu",
    threads: NonNegativeInt = 0,
    overwrite: bool = False,
    **settings,
) -> None:
    """Few-shot intent classification from speech, by label likelihood (and by generation); accuracy, confusion matrix.

    Example: spiritlm eval ic --model demo_out/lm/tiny-interleaved --manifest demo_out/corpus/manifest.jsonl
    --units demo_out/units.jsonl --out demo_out/evals/ic --shots 30

    Args:
        model: Hugging Face LLaMA folder, `spiritlm train` run folder or checkpoint folder.
        manifest: manifest JSONL (intent, split).
        units: Meta units JSONL of the manifest's audio.
        out: output folder (metrics.json, predictions.jsonl).
        vocoder: unused by ic (accepted so every task takes the same flags).
        speech_tokenizer: unused by ic (inputs are units).
        device: cpu or cuda.
        threads: CPU threads of torch, BLAS and OpenMP (0: leave them as they are).
        overwrite: replace a finished evaluation in OUT (one holding metrics.json).
    """
    _check_out(out, overwrite)
    _check_inputs(manifest, units, settings["split"])
    _check_paths(model, vocoder, speech_tokenizer)
    _check_units_match(manifest, units)
    from spiritlm.numerics import threads as pinned_threads

    with pinned_threads(threads):
        run_ic(_model(model, vocoder, speech_tokenizer, device), ManifestInputs(manifest, units), IcConfig(**settings), out)


@flags_from(ZeroshotConfig, "seed", "max_items", "batch_size", "split")
def zeroshot(
    model: str,
    out: str,
    manifest: str | None = None,
    sets: str | None = None,
    speech_tokenizer: str | None = None,
    units: str | None = None,
    tasks: str = "lexical,syntactic,storycloze",
    vocoder: str | None = None,
    device: str = "cpu",
    threads: NonNegativeInt = 0,
    overwrite: bool = False,
    **settings,
) -> None:
    """Zero-shot likelihood tasks: lexical (sWUGGY-style), syntactic (sBLIMP-style), story endings (StoryCloze-style), spoken and written.

    With --sets DIR, reads DIR/lexical/dev (ZeroSpeech 2021 sWUGGY: *.wav + gold.csv), DIR/syntactic/dev (sBLIMP),
    DIR/storycloze/{spoken,written.csv}; without it, generates such sets from the corpus vocabulary of --manifest into
    OUT/sets (pseudo-words and sentences rendered by espeak).

    Example: spiritlm eval zeroshot --model demo_out/lm/tiny-interleaved --manifest demo_out/corpus/manifest.jsonl
    --speech_tokenizer demo_out/tokenizer --out demo_out/evals/zeroshot

    Args:
        model: Hugging Face LLaMA folder, `spiritlm train` run folder or checkpoint folder.
        out: output folder (metrics.json, predictions.jsonl; sets/ when generated).
        manifest: the corpus manifest whose vocabulary the synthetic sets use (when --sets is not given).
        sets: a folder in the ZeroSpeech 2021 / StoryCloze layouts (see evals/README.md).
        speech_tokenizer: speech tokenizer folder; spoken items need it unless the set folder has units.jsonl.
        units: unused by zeroshot (spoken items are tokenized from their WAVs); accepted so every task takes the same flags.
        tasks: comma-separated subset of lexical, syntactic, storycloze.
        vocoder: unused by zeroshot.
        device: cpu or cuda.
        threads: CPU threads of torch, BLAS and OpenMP (0: leave them as they are).
        overwrite: replace a finished evaluation in OUT (one holding metrics.json).
    """
    from pathlib import Path

    from spiritlm.errors import UserError

    _check_out(out, overwrite)
    if sets is not None and not Path(sets).is_dir():
        raise UserError(f"{sets}: no such folder (--sets)")
    if sets is None and manifest is None:
        raise UserError("give --manifest (synthetic sets from its vocabulary) or --sets DIR")
    _check_inputs(manifest if sets is None else None)
    _check_paths(model, vocoder, speech_tokenizer)
    from spiritlm.numerics import threads as pinned_threads

    with pinned_threads(threads):
        cfg = ZeroshotConfig(tasks=[t.strip() for t in tasks.split(",") if t.strip()], **settings)
        run_zeroshot(_model(model, vocoder, speech_tokenizer, device), ZeroshotInputs(manifest=manifest, sets=sets), cfg, out)


# tts and stsp keep their commands beside their APIs (light modules: numpy, no torch at import)
from spiritlm.evals.stsp import stsp_command  # noqa: E402
from spiritlm.evals.stsp_score import stsp_score_command  # noqa: E402
from spiritlm.evals.tts import tts_command  # noqa: E402
from spiritlm.judges.cli import judges  # noqa: E402  (the judges' command, listed with the evaluations that use them)

COMMANDS = {"asr": asr, "ic": ic, "zeroshot": zeroshot, "judges": judges, "tts": tts_command, "stsp": stsp_command,
            "stsp-score": stsp_score_command}
