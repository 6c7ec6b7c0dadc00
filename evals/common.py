"""What every evaluation shares: the model bundle, inputs, metrics with bootstrap intervals, output files.

* :func:`load_eval_model` → :class:`EvalModel` (the LM, optional vocoder and speech tokenizer);
* inputs: :func:`load_manifest_items` (a manifest split as dicts; units files are read by
  :func:`spiritlm.units_jsonl.load_units`), :func:`speech_string` (a unit dict → the LM's token string), :func:`draw_shots`
  (seeded few-shot examples that never include the target);
* metrics: :func:`normalize_text`, :func:`word_error_rate` / :func:`char_error_rate` (:mod:`spiritlm.edit_distance`),
  :func:`bootstrap_ci` (95% percentile bootstrap), :func:`metric` (one headline metric's record);
* the task signature: ``run_<task>(model: EvalModel, inputs, config, out_dir=None) -> EvalResult``
  (:class:`ManifestInputs` are asr's and ic's inputs);
* outputs: :class:`EvalResult` and :func:`write_eval_outputs` (``metrics.json`` +
  ``predictions.jsonl``, written atomically, byte-identical for the same seed, and one summary line);
  :func:`check_eval_output` (an existing finished ``--out`` needs ``--overwrite true``).
"""

from __future__ import annotations

import json
import os
import random
import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spiritlm.errors import UserError

__all__ = [
    "EvalModel",
    "EvalResult",
    "bootstrap_ci",
    "check_eval_output",
    "check_speech_vocabulary",
    "check_units_match",
    "char_error_rate",
    "draw_shots",
    "edit_counts",
    "load_eval_model",
    "load_manifest_items",
    "metric",
    "normalize_text",
    "resolve_speaker",
    "select_items",
    "speech_string",
    "units_of",
    "with_speech_strings",
    "word_error_rate",
    "write_eval_outputs",
]


# ---------------------------------------------------------------------------------------------
# The model bundle
# ---------------------------------------------------------------------------------------------


@dataclass
class EvalModel:
    """An LM ready for evaluation, with what speech outputs and inputs need.

    Attributes:
        lm: the :class:`spiritlm.generation.SpiritLM`.
        vocoder: turns unit dicts into 16 kHz waveforms (``decode(units)``), or None.
        speech_tokenizer: turns audio into unit dicts / token strings, or None.
        expressive: the LM's vocabulary has pitch (``[Pi…]``) and style (``[St…]``) tokens.
        name: the model path as given (recorded in ``metrics.json``).
    """

    lm: Any
    vocoder: Any | None = None
    speech_tokenizer: Any | None = None
    expressive: bool = False
    name: str = ""


def _load_vocoder(path: str, device: str) -> Any:
    from spiritlm.vocoder import Vocoder

    try:
        return Vocoder.from_pretrained(path, device=device)
    except FileNotFoundError as e:
        raise UserError(f"{e} (--vocoder)") from None


def resolve_speaker(vocoder: Any, speaker: int | str) -> tuple[int | str, str | None]:
    """``(speaker to use, note)``: a numeric speaker the vocoder's table lacks falls back to 0, with a note.

    Meta's protocol speaks with speaker 2 of its 4-speaker vocoder; a vocoder trained here on
    fewer speakers cannot, and the note (printed and kept in ``metrics.json``) says so.
    """
    if vocoder is None or not isinstance(speaker, int) and not str(speaker).isdigit():
        return speaker, None
    n = int(getattr(getattr(vocoder, "config", None), "num_speakers", 0) or 0)
    if int(speaker) < max(n, 1):
        return int(speaker), None
    return 0, f"vocoder speaker {speaker} asked, the vocoder has {n} speaker{'s' if n != 1 else ''}: speaker 0 used"


def check_model_paths(model: str, *, vocoder: str | None = None, speech_tokenizer: str | None = None) -> None:
    """One-line :class:`UserError` for a missing model / vocoder / speech tokenizer folder.

    Light (no torch): the eval commands call it before the seconds of model imports, so a typo
    in a path costs a second.
    """
    if not Path(model).is_dir():
        raise UserError(f"{model}: no such model directory (--model)")
    if speech_tokenizer is not None and not Path(speech_tokenizer).is_dir():
        raise UserError(f"{speech_tokenizer}: no such speech tokenizer directory (--speech_tokenizer)")
    if vocoder is not None and not Path(vocoder).is_dir():
        raise UserError(f"{vocoder}: no such vocoder directory (--vocoder)")


def load_eval_model(
    model: str, *, vocoder: str | None = None, speech_tokenizer: str | None = None, device: str = "cpu"
) -> EvalModel:
    """Loads a model directory (any layout :meth:`SpiritLM.from_pretrained` reads) for evaluation.

    Args:
        model: Hugging Face LLaMA folder, ``spiritlm train`` run folder or checkpoint folder.
        vocoder: a vocoder folder (needed by the tasks that output speech).
        speech_tokenizer: a :class:`spiritlm.tokenizers.speech_tokenizer.SpeechTokenizer`
            folder (needed when the inputs are audio rather than units).
        device: ``cpu`` or ``cuda[:N]``.
    """
    check_model_paths(model, vocoder=vocoder, speech_tokenizer=speech_tokenizer)  # before the imports of torch
    from spiritlm.generation import SpiritLM

    stok = None
    if speech_tokenizer is not None:
        from spiritlm.tokenizers.speech_tokenizer import SpeechTokenizer

        try:
            stok = SpeechTokenizer.load(speech_tokenizer, device=device)
        except FileNotFoundError as e:
            raise UserError(f"{e} (--speech_tokenizer)") from None
    try:  # the speech tokenizer also tells the LM which units exist (its speech mask)
        lm = SpiritLM.from_pretrained(model, device=device, speech_tokenizer=stok)
    except FileNotFoundError as e:
        raise UserError(f"{e} (--model)") from None
    voc = None
    if vocoder is not None:
        from spiritlm.generation import check_compatible

        voc = _load_vocoder(vocoder, device)
        check_compatible(lm.tokenizer, lm.num_units, stok, voc)  # a vocoder for other units: refused before any work
    expressive = bool(getattr(lm.tokenizer, "expressive", False))
    return EvalModel(lm=lm, vocoder=voc, speech_tokenizer=stok, expressive=expressive, name=str(model))


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


def load_manifest_items(manifest: str | os.PathLike, split: str | None = None) -> list[dict]:
    """The lines of a manifest (``audio`` made absolute) as dicts, keeping only ``split`` if given.

    Raises:
        UserError: unreadable manifest, bad line (``path:line: …``), or no line of that split.
    """
    from spiritlm.corpus.manifest import ManifestError, read_manifest

    if not Path(manifest).is_file():
        raise UserError(f"{manifest}: no such manifest (--manifest)")
    try:
        utts = read_manifest(manifest)
    except ManifestError as e:
        raise UserError(f"{e} (--manifest)") from None
    items = [u.to_json() for u in utts if split is None or u.split == split]
    if not items:
        splits = sorted({str(u.split) for u in utts})
        raise UserError(f"{manifest}: no utterance of split {split!r} (splits present: {', '.join(splits)}) (--manifest)")
    return items


def check_units_match(items: Sequence[dict], units: dict[str, dict], manifest: str | os.PathLike, units_path: str | os.PathLike) -> None:
    """One-line :class:`UserError` when rows of ``units`` that share an id with the manifest were
    made from other audio (another corpus whose ids overlap): a different audio path or length.

    See :func:`spiritlm.units_jsonl.units_mismatch`; rows found only by audio path match by
    construction.
    """
    from spiritlm.units_jsonl import units_mismatch

    bad = []
    for it in items:
        rec = units.get(str(it.get("id")))
        if rec is None:
            continue
        why = units_mismatch(str(it["id"]), it.get("audio"), it.get("duration"), rec, units_path)
        if why is not None:
            bad.append(why)
    if bad:
        raise UserError(f"{units_path}: units of another corpus than {manifest}? {len(bad)} of {len(items)} utterances "
                        f"differ ({bad[0]}) (--units/--manifest)")


def select_items(items: Sequence[dict], max_items: int | None, seed: int) -> list[dict]:
    """Up to ``max_items`` items, a seeded sample kept in file order (all items when None)."""
    if max_items is None or max_items >= len(items):
        return list(items)
    keep = set(random.Random(seed).sample(range(len(items)), max_items))
    return [it for i, it in enumerate(items) if i in keep]


def units_of(item: dict, units: dict[str, dict]) -> dict | None:
    """The units row of a manifest item: by ``id``, else by its ``audio`` path; None if absent."""
    row = units.get(str(item.get("id")))
    if row is None and item.get("audio"):
        row = units.get(str(item["audio"])) or units.get(str(Path(item["audio"]).resolve()))
    return row


def speech_string(units_row: dict, expressive: bool) -> str:
    """A unit dict → the LM's token string (``formats.units_to_string``; deduplicated HuBERT).

    ``expressive`` adds the pitch and style streams (both must be present); a Base model's
    string has the HuBERT tokens only, whatever else the row holds.
    """
    from spiritlm.formats import units_to_string

    if expressive:
        missing = [k for k in ("pitch", "style") if not units_row.get(k)]
        if missing:
            raise ValueError(f"units of {units_row.get('id', units_row.get('audio'))!r} lack {', '.join(missing)} "
                             "(an expressive model needs them)")
    return units_to_string(units_row, has_pitch=expressive, has_style=expressive)


def with_speech_strings(items: Sequence[dict], units: dict[str, dict], expressive: bool) -> tuple[list[tuple[dict, str]], list[str]]:
    """Pairs each item with its LM speech string; returns ``([(item, speech string)], ids without usable units)``."""
    ok, missing = [], []
    for it in items:
        row = units_of(it, units)
        if row is None:
            missing.append(str(it["id"]))
            continue
        try:
            ok.append((it, speech_string(row, expressive)))
        except (ValueError, KeyError):
            missing.append(str(it["id"]))
    return ok, missing


def check_speech_vocabulary(model: EvalModel, speech: str, units: str | os.PathLike) -> None:
    """Raises a one-line :class:`UserError` when the LM cannot encode a speech string of ``units``
    (a text-only model, or units of another tokenizer)."""
    try:
        model.lm.tokenizer.encode(speech)
    except KeyError as e:
        raise UserError(f"{model.name}: the model's vocabulary cannot encode the units of {units} ({e.args[0]}); "
                        "a text-only model or another speech tokenizer? (--model/--units)") from None


def draw_shots(pool: Sequence[dict], k: int, seed: int, target_id: str) -> list[dict]:
    """``k`` few-shot examples from ``pool`` for the item ``target_id``, never the target itself.

    The draw depends only on ``(seed, target_id)`` and the pool, so an item gets the same shots
    whatever else is evaluated and in whatever order. Fewer than ``k`` come back only when the
    pool (minus the target) is smaller.
    """
    candidates = [p for p in pool if str(p["id"]) != str(target_id)]
    rng = random.Random(f"{seed}:{target_id}")  # str seeds hash deterministically (sha512)
    return rng.sample(candidates, min(k, len(candidates)))


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------

_PUNCT_RE = re.compile(r"[^\w\s']|_")
_SPACE_RE = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """Lower-case, punctuation replaced by spaces (apostrophes inside words kept), spaces collapsed.

    >>> normalize_text("  Hello, World!  It's  ME. ")
    "hello world it's me"
    """
    text = _PUNCT_RE.sub(" ", text.lower())
    text = " ".join(w.strip("'") for w in text.split())
    return _SPACE_RE.sub(" ", text).strip()


def edit_counts(ref: str, hyp: str, unit: str = "word") -> tuple[int, int]:
    """``(errors, reference length)`` of one utterance after :func:`normalize_text`.

    ``unit`` is ``"word"`` or ``"char"`` (characters of the normalised string, spaces included);
    the counting and its empty-reference rule are :mod:`spiritlm.edit_distance`'s.
    """
    from spiritlm import edit_distance

    if unit not in ("word", "char"):
        raise ValueError(f"unit must be 'word' or 'char', got {unit!r}")
    return edit_distance.edit_counts(normalize_text(ref), normalize_text(hyp), unit)


def word_error_rate(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Corpus WER: all word errors / all reference words (after :func:`normalize_text`)."""
    from spiritlm.edit_distance import error_rate

    return error_rate([normalize_text(r) for r in refs], [normalize_text(h) for h in hyps], "word")


def char_error_rate(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Corpus CER: all character errors / all reference characters (after :func:`normalize_text`)."""
    from spiritlm.edit_distance import error_rate

    return error_rate([normalize_text(r) for r in refs], [normalize_text(h) for h in hyps], "char")


def ratio_of_sums(rows: np.ndarray) -> float:
    """Statistic for :func:`bootstrap_ci` over ``(errors, length)`` rows: a corpus error rate."""
    total = rows[:, 1].sum()
    return float(rows[:, 0].sum() / total) if total else float("nan")


def bootstrap_ci(
    values: Sequence[Any], *, n_resamples: int = 1000, seed: int = 0, statistic: Callable[[np.ndarray], float] = np.mean
) -> tuple[float, float]:
    """95% percentile-bootstrap interval of ``statistic(values)``.

    Items (rows of ``values``: numbers, or tuples such as ``(errors, length)`` with
    :func:`ratio_of_sums`) are resampled with replacement ``n_resamples`` times with a seeded
    generator; the interval is the 2.5th and 97.5th percentiles of the resampled statistic.
    Returns ``(nan, nan)`` for no items.
    """
    arr = np.asarray(values, dtype=np.float64)
    n = len(arr)
    if n == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_resamples, n))
    stats = np.array([statistic(arr[i]) for i in idx], dtype=np.float64)
    low, high = np.nanpercentile(stats, [2.5, 97.5])
    return float(low), float(high)


def metric(value: float, ci95: tuple[float, float], chance: float | None, n: int, **extra: Any) -> dict[str, Any]:
    """A headline metric's record in ``metrics.json``: ``{"value", "ci95", "chance", "n", …}``."""
    return {"value": _num(value), "ci95": [_num(ci95[0]), _num(ci95[1])], "chance": _num(chance), "n": int(n), **extra}


def _num(x: Any) -> Any:
    """Floats rounded to 6 decimals (stable text across runs); NaN → None (valid JSON)."""
    if x is None:
        return None
    x = float(x)
    return None if x != x else round(x, 6)


# ---------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------


@dataclass
class EvalResult:
    """What a task returns and writes.

    Attributes:
        task: task name (``asr``, ``ic``, ``zeroshot``, …).
        metrics: headline metrics by name (each from :func:`metric`), plus ``"config"`` (model,
            seed, shots, …) and any task extras (confusion matrix, per-set scores).
        predictions: one dict per evaluated item (``id``, ``shot_ids``, ``seed``, ``output``,
            ``score``, …).
        throughput: timing of the run (tokens/s); printed, kept out of ``metrics.json`` so that
            the same seed gives the same file.
    """

    task: str
    metrics: dict[str, Any]
    predictions: list[dict] = field(default_factory=list)
    throughput: dict[str, Any] = field(default_factory=dict)


@dataclass
class ManifestInputs:
    """The inputs of ``run_asr`` and ``run_ic``: a manifest and the units of its audio (read by the task).

    Attributes:
        manifest: manifest JSONL (``text`` or ``intent``, ``split``).
        units: Meta units JSONL of the manifest's audio (``spiritlm tokenize``).
    """

    manifest: str | os.PathLike
    units: str | os.PathLike


def _write_tmp(path: Path, text: str) -> Path:
    """``text`` in a temporary file next to ``path`` (renamed by the caller); returns its path."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
    except BaseException:
        os.unlink(tmp)
        raise
    return Path(tmp)


#: the file whose presence makes an eval output folder finished (written last)
EVAL_DONE = "metrics.json"


def check_eval_output(out: str | os.PathLike, overwrite: bool) -> None:
    """The output rule of ``spiritlm eval <task> --out`` (:func:`spiritlm.atomic.check_output`), before any work.

    A folder holding ``metrics.json`` is a finished evaluation: refused unless ``--overwrite
    true``. Anything else (absent, empty, an interrupted run's generated sets) is written into.
    """
    from spiritlm.atomic import check_output

    check_output(out, overwrite, done=(EVAL_DONE,))

def summary_line(result: EvalResult) -> str:
    """``[eval <task>] name=value name_ci95=low..high name_chance=c … n=N`` for the headline metrics."""
    parts = [f"[eval {result.task}]"]
    n = None
    for name, rec in result.metrics.items():
        if not (isinstance(rec, dict) and "value" in rec and "ci95" in rec):
            continue
        fmt = lambda x: "nan" if x is None else f"{x:.4f}"  # noqa: E731
        parts.append(f"{name}={fmt(rec['value'])}")
        parts.append(f"{name}_ci95={fmt(rec['ci95'][0])}..{fmt(rec['ci95'][1])}")
        if rec.get("chance") is not None:
            parts.append(f"{name}_chance={fmt(rec['chance'])}")
        n = rec.get("n", n)
    if n is not None:
        parts.append(f"n={n}")
    if result.throughput.get("tokens_per_s") is not None:
        parts.append(f"tokens_per_s={result.throughput['tokens_per_s']:.1f}")
    return " ".join(parts)


def write_eval_outputs(out_dir: str | os.PathLike, result: EvalResult) -> None:
    """Writes ``out_dir/metrics.json`` and ``out_dir/predictions.jsonl`` atomically; prints one line.

    ``metrics.json`` is renamed into place last (after the old one is removed): a folder holding
    it holds a finished, consistent evaluation (:func:`check_eval_output`).

    Both files depend only on the model, the inputs and the seed (floats rounded by
    :func:`metric`, keys in insertion order), so a rerun with the same seed writes the same
    bytes. Timing goes to ``out_dir/throughput.json`` (not reproducible by nature).
    """
    from spiritlm.atomic import make_parents

    out = Path(out_dir)
    make_parents(out / EVAL_DONE)
    metrics = {"task": result.task, **result.metrics}
    lines = "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in result.predictions)
    texts = {"predictions.jsonl": lines, "throughput.json": json.dumps(result.throughput, indent=2) + "\n" if result.throughput else None,
             EVAL_DONE: json.dumps(metrics, indent=2, ensure_ascii=False) + "\n"}
    tmps: dict[str, Path] = {}
    try:  # every file complete under a temporary name first; metrics.json (what later runs trust) goes in last
        for name, text in texts.items():
            if text is not None:
                tmps[name] = _write_tmp(out / name, text)
        (out / EVAL_DONE).unlink(missing_ok=True)  # no moment where old metrics sit beside new predictions
        for name in texts:
            if name in tmps:  # atomic: several files committed in order, metrics.json last
                os.replace(tmps.pop(name), out / name)
            else:
                (out / name).unlink(missing_ok=True)  # an older run's throughput would not describe this one
    finally:
        for tmp in tmps.values():
            tmp.unlink(missing_ok=True)
    print(summary_line(result), flush=True)
