"""``spiritlm eval <task>``: thin command-line wrappers over the ``run_<task>`` APIs of :mod:`spiritlm.evals`."""

from __future__ import annotations

from jsonargparse.typing import NonNegativeInt, PositiveInt


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


def asr(
    model: str,
    manifest: str,
    units: str,
    out: str,
    shots: NonNegativeInt = 10,
    seed: int = 0,
    split: str = "test",
    shot_split: str = "train",
    max_items: PositiveInt | None = None,
    batch_size: PositiveInt = 16,
    max_new_tokens: PositiveInt = 384,
    vocoder: str | None = None,
    speech_tokenizer: str | None = None,
    device: str = "cpu",
    threads: NonNegativeInt = 0,
    overwrite: bool = False,
) -> None:
    """Few-shot ASR: [Speech]<units>[Text]<transcript> × k, then the target; WER and CER (jiwer).

    Example: spiritlm eval asr --model demo_out/lm/tiny-interleaved --manifest demo_out/corpus/manifest.jsonl
    --units demo_out/units.jsonl --out demo_out/evals/asr --shots 10

    Args:
        model: Hugging Face LLaMA folder, `spiritlm train` run folder or checkpoint folder.
        manifest: manifest JSONL (text, split).
        units: Meta units JSONL of the manifest's audio (`spiritlm tokenize`).
        out: output folder (metrics.json, predictions.jsonl).
        shots: in-context examples per item (clamped to the model's context).
        seed: seeds the shots and the item sample; the same seed writes the same files.
        split: split evaluated.
        shot_split: split the shots come from.
        max_items: evaluate a seeded sample of this many items (default: all).
        batch_size: prompts decoded together.
        max_new_tokens: ceiling of an answer's budget, min(ceiling, 2 x reference tokens + 10) (tokens).
        vocoder: vocoder folder (unused by asr; accepted so every task takes the same flags).
        speech_tokenizer: speech tokenizer folder (unused by asr: inputs are units).
        device: cpu or cuda.
        threads: CPU threads of torch, BLAS and OpenMP (0: leave them as they are).
        overwrite: replace a finished evaluation in OUT (one holding metrics.json).
    """
    _check_out(out, overwrite)
    _check_inputs(manifest, units, split)
    _check_paths(model, vocoder, speech_tokenizer)
    _check_units_match(manifest, units)
    from spiritlm.evals.asr import run_asr
    from spiritlm.numerics import threads as pinned_threads

    with pinned_threads(threads):
        run_asr(_model(model, vocoder, speech_tokenizer, device), manifest, units, out, shots=shots, seed=seed, split=split,
                shot_split=shot_split, max_items=max_items, batch_size=batch_size, max_new_tokens=max_new_tokens)


def ic(
    model: str,
    manifest: str,
    units: str,
    out: str,
    shots: NonNegativeInt = 30,
    seed: int = 0,
    split: str = "test",
    shot_split: str = "train",
    max_items: PositiveInt | None = None,
    batch_size: PositiveInt = 16,
    generation: bool = True,
    vocoder: str | None = None,
    speech_tokenizer: str | None = None,
    device: str = "cpu",
    threads: NonNegativeInt = 0,
    overwrite: bool = False,
) -> None:
    """Few-shot intent classification from speech, by label likelihood (and by generation); accuracy, confusion matrix.

    Example: spiritlm eval ic --model demo_out/lm/tiny-interleaved --manifest demo_out/corpus/manifest.jsonl
    --units demo_out/units.jsonl --out demo_out/evals/ic --shots 30

    Args:
        model: Hugging Face LLaMA folder, `spiritlm train` run folder or checkpoint folder.
        manifest: manifest JSONL (intent, split).
        units: Meta units JSONL of the manifest's audio.
        out: output folder (metrics.json, predictions.jsonl).
        shots: in-context examples per item (paper: 30; clamped to the model's context).
        seed: seeds the shots and the item sample.
        split: split evaluated.
        shot_split: split the shots come from.
        max_items: evaluate a seeded sample of this many items (default: all).
        batch_size: sequences per forward pass.
        generation: also predict by greedy generation (accuracy_generation).
        vocoder: unused by ic (accepted so every task takes the same flags).
        speech_tokenizer: unused by ic (inputs are units).
        device: cpu or cuda.
        threads: CPU threads of torch, BLAS and OpenMP (0: leave them as they are).
        overwrite: replace a finished evaluation in OUT (one holding metrics.json).
    """
    _check_out(out, overwrite)
    _check_inputs(manifest, units, split)
    _check_paths(model, vocoder, speech_tokenizer)
    _check_units_match(manifest, units)
    from spiritlm.evals.ic import run_ic
    from spiritlm.numerics import threads as pinned_threads

    with pinned_threads(threads):
        run_ic(_model(model, vocoder, speech_tokenizer, device), manifest, units, out, shots=shots, seed=seed, split=split,
               shot_split=shot_split, max_items=max_items, batch_size=batch_size, generation=generation)


def zeroshot(
    model: str,
    out: str,
    manifest: str | None = None,
    sets: str | None = None,
    speech_tokenizer: str | None = None,
    units: str | None = None,
    seed: int = 0,
    max_items: PositiveInt | None = None,
    batch_size: PositiveInt = 16,
    split: str = "test",
    tasks: str = "lexical,syntactic,storycloze",
    vocoder: str | None = None,
    device: str = "cpu",
    threads: NonNegativeInt = 0,
    overwrite: bool = False,
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
        seed: seeds the synthetic sets and the item sample.
        max_items: at most this many pairs per set (seeded sample).
        batch_size: sequences per forward pass.
        split: manifest split whose words and sentences seed the synthetic sets.
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
    from spiritlm.evals.zeroshot import run_zeroshot
    from spiritlm.numerics import threads as pinned_threads

    with pinned_threads(threads):
        run_zeroshot(_model(model, vocoder, speech_tokenizer, device), out, manifest=manifest, sets=sets, seed=seed,
                     max_items=max_items, batch_size=batch_size, split=split,
                     tasks=[t.strip() for t in tasks.split(",") if t.strip()])


# tts and stsp keep their commands beside their APIs (light modules: numpy, no torch at import)
from spiritlm.evals.stsp import stsp_command  # noqa: E402
from spiritlm.evals.stsp_score import stsp_score_command  # noqa: E402
from spiritlm.evals.tts import tts_command  # noqa: E402
from spiritlm.judges.cli import judges  # noqa: E402  (the judges' command, listed with the evaluations that use them)

COMMANDS = {"asr": asr, "ic": ic, "zeroshot": zeroshot, "judges": judges, "tts": tts_command, "stsp": stsp_command,
            "stsp-score": stsp_score_command}
