"""Speech-Text Sentiment Preservation (STSP): does a continuation keep its prompt's sentiment?

Meta's benchmark (Spirit LM paper, §5): prompts of positive / negative / neutral sentiment, in
text and in speech, are continued in the four directions T→T, T→S, S→T and S→S; the sentiment
of each continuation is judged by a text classifier (text outputs) or a speech classifier
(speech outputs, made audible by the vocoder); the score of a direction is the fraction of
continuations whose judged sentiment is the prompt's, and the benchmark's number is the average
of the four.

Inputs (:func:`read_stsp_items`):

* the synthetic corpus' manifest (``sentiment`` field; text from ``text``, speech from the
  units JSONL, word alignments to cut few-shot examples), or
* Meta's STSP manifests (``records_emov_*.jsonl`` / ``manifest/emov/emov.test.jsonl``: one JSON
  object a line with ``id``, ``wav_path`` relative to the data root, ``emotion`` (``happy``,
  ``amused``, ``angry``, ``sad``, ``neutral``, ``default``) or ``sentiment``, and for text prompts
  ``asr`` (or ``text``)). Speech prompts come from a units file keyed by ``id`` or audio path, or
  from the model's speech tokenizer (``--speech_tokenizer``). Few-shot examples for them come from
  Meta's ``few_shot/{t2t,t2s,s2t,s2s}.jsonl`` (:func:`read_meta_few_shot`).

Prompts (:func:`build_stsp_prompt`): zero-shot, the prompt in its modality followed by the
output modality's marker when it differs (``[Text]the food was great[Speech]``); a same-modality
continuation follows without a marker. Few-shot (``shots=k``), ``k`` examples are put before it,
each a prompt→continuation pair in the same direction, separated by their modality markers only
(Meta's few-shot prompts put a newline after each; a newline is a token our LMs never saw, and
the ASR/TTS tasks use the markers alone too): examples come from the TRAIN split, each one utterance cut at the word boundary
nearest its middle (its first half the prompt, its second half the continuation, in the
direction's modalities: text words or the units of those words' time span; shots are dropped
from the end until the continuation's budget fits the model's context), with sentiments
balanced (round-robin over the labels, so the examples never hint at the target's label), drawn
per target with a seed, never the target itself. Meta's T→T examples put a ``[Text]`` marker
before the continuation; here shots and target share one rule (no marker within a modality).

Decoding: sampling with temperature 0.8 and top-p 0.95 (the paper's setting; Meta's released
script uses 0.9) and ``seed + row`` per prompt, or greedy (``do_sample=False``). A text
continuation stops at EOS, a modality marker or a newline; a speech continuation at EOS, a
marker or a newline (few-shot separators), and its tokens go through the vocoder.

Chance level of a direction: the accuracy the judged labels would reach if they were
independent of the prompts' labels, ``sum_c p_prompt(c) * p_judged(c)`` (1/3 for balanced
prompts and any judge; a model that always writes positive text gets exactly its chance).
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spiritlm.errors import UserError

DIRECTIONS = ("t2t", "t2s", "s2t", "s2s")
MODALITY = {"t": "text", "s": "speech"}
SHOT_SEPARATOR = ""
#: what an empty continuation is judged (never a label, so never right)
EMPTY = "(empty)"
#: Meta's field names of the STSP manifests.
META_AUDIO_KEY, META_TEXT_KEYS, META_LABEL_KEYS = "wav_path", ("asr", "text"), ("sentiment", "emotion")


@dataclass
class StspItem:
    """One STSP prompt.

    Attributes:
        id: item id (string).
        label: ``positive``/``negative``/``neutral``.
        text: the written prompt (None: no text directions).
        speech: the prompt's LM token string (None: no speech directions).
        audio: path of the prompt's audio (judge ceilings; Meta's layout), or None.
        halves: ``{"text": (first, second), "speech": (first, second)}``: the item cut at the
            word boundary nearest its middle (few-shot examples), when word times are known.
    """

    id: str
    label: str
    text: str | None = None
    speech: str | None = None
    audio: str | None = None
    halves: dict[str, tuple[str, str]] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Reading prompts
# ---------------------------------------------------------------------------------------------


def is_meta_stsp_manifest(path: str | os.PathLike) -> bool:
    """True when the first line of ``path`` is in Meta's STSP layout (``wav_path`` or ``emotion``, no ``words``)."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError:
                    return False
                return isinstance(obj, dict) and ("wav_path" in obj or "emotion" in obj or "asr" in obj) and "words" not in obj
    return False


def split_units_at(units_row: dict, seconds: float) -> tuple[dict, dict]:
    """Cuts a Meta unit dict at ``seconds``: each stream at ``round(seconds * rate)`` frames
    (HuBERT 25 Hz, pitch 12.5 Hz, style 1 Hz; the style frame that straddles the cut goes to both).
    """
    rates = {"hubert": 25.0, "pitch": 12.5, "style": 1.0}
    first, second = {}, {}
    for key, rate in rates.items():
        if not units_row.get(key):
            continue
        toks = str(units_row[key]).split()
        if key == "style":
            cut_a, cut_b = min(len(toks), int(np.ceil(seconds * rate))), min(len(toks) - 1, int(seconds * rate))
            first[key], second[key] = " ".join(toks[: max(cut_a, 1)]), " ".join(toks[max(cut_b, 0):])
        else:
            cut = min(max(int(round(seconds * rate)), 1), len(toks) - 1) if len(toks) > 1 else len(toks)
            first[key], second[key] = " ".join(toks[:cut]), " ".join(toks[cut:])
    return first, second


def _middle_boundary(words: Sequence[dict]) -> int | None:
    """Index ``m`` (1..len-1) of the word that starts the second half: the boundary nearest half the speech."""
    if len(words) < 2:
        return None
    start, end = float(words[0]["start"]), float(words[-1]["end"])
    mid = (start + end) / 2
    return min(range(1, len(words)), key=lambda m: abs(float(words[m]["start"]) - mid))


def items_from_manifest(manifest_items: Sequence[dict], units: dict[str, dict] | None, expressive: bool) -> tuple[list[StspItem], int]:
    """Synthetic-corpus manifest lines (dicts) with a ``sentiment`` -> :class:`StspItem` s.

    Returns ``(items, skipped)``: lines without sentiment are ignored (not counted); lines whose
    units are missing keep their text side only and are counted in ``skipped``.
    """
    from spiritlm.evals.common import speech_string, units_of
    from spiritlm.evals.judges import to_sentiment

    items, skipped = [], 0
    for it in manifest_items:
        if not it.get("sentiment"):
            continue
        row = units_of(it, units) if units else None
        speech = None
        if row is not None:
            try:
                speech = speech_string(row, expressive)
            except (ValueError, KeyError):
                row = None
        if row is None and units:
            skipped += 1
        words = it.get("words") or []
        halves: dict[str, tuple[str, str]] = {}
        m = _middle_boundary(words)
        if m is not None:
            halves["text"] = (" ".join(w["word"] for w in words[:m]), " ".join(w["word"] for w in words[m:]))
            if row is not None:
                a, b = split_units_at(row, float(words[m]["start"]))
                try:
                    halves["speech"] = (speech_string(a, expressive), speech_string(b, expressive))
                except (ValueError, KeyError):
                    pass
        items.append(StspItem(str(it["id"]), to_sentiment(it["sentiment"]), it.get("text") or None, speech, it.get("audio"), halves))
    return items, skipped


def read_meta_stsp(
    path: str | os.PathLike, *, audio_root: str | os.PathLike | None = None, units: dict[str, dict] | None = None,
    speech_tokenizer: Any = None, expressive: bool = False,
) -> tuple[list[StspItem], list[dict]]:
    """Reads one of Meta's STSP manifests (see the module docstring).

    ``wav_path`` is resolved against ``audio_root`` (default: the manifest's folder, then its
    parents, where Meta's ``data/stsp_data`` root usually is). The speech prompt is the units row
    of the item (by ``id``, then by audio path) or, failing that, the speech tokenizer's encoding
    of the audio.

    Returns:
        ``(items, problems)``: problems are ``{"line", "id", "error"}`` of skipped lines (no
        label, an unknown label, unreadable audio).

    Raises:
        UserError: ``path:line:`` for invalid JSON.
    """
    from spiritlm.evals.common import speech_string, units_of
    from spiritlm.evals.judges import LABELS, to_sentiment

    path = Path(path)
    roots = [Path(audio_root)] if audio_root else [path.parent, path.parent.parent, path.parent.parent.parent]
    items: list[StspItem] = []
    problems: list[dict] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{lineno}: invalid JSON: {e.msg} (--manifest)") from None
            uid = str(obj.get("id", lineno))
            raw = next((obj[k] for k in META_LABEL_KEYS if obj.get(k)), None)
            label = to_sentiment(raw) if raw is not None else None
            if label not in LABELS:
                problems.append({"line": lineno, "id": uid, "error": f"no sentiment/emotion label mapping to {LABELS} (got {raw!r})"})
                continue
            text = next((obj[k] for k in META_TEXT_KEYS if isinstance(obj.get(k), str) and obj[k].strip()), None)
            audio = None
            if obj.get(META_AUDIO_KEY):
                rel = Path(obj[META_AUDIO_KEY])
                cands = [rel] if rel.is_absolute() else [r / rel for r in roots] + [r / "data" / rel for r in roots]
                audio = next((str(c) for c in cands if c.is_file()), str(cands[0]))
            speech = None
            row = units_of({"id": uid, "audio": audio}, units) if units else None
            if row is not None:
                speech = speech_string(row, expressive)
            elif audio is not None and speech_tokenizer is not None:
                try:
                    speech = speech_tokenizer.encode_string(audio)
                except (OSError, ValueError) as e:
                    problems.append({"line": lineno, "id": uid, "error": f"speech prompt unusable: {e}"})
            items.append(StspItem(uid, label, text, speech, audio))
    return items, problems


def read_meta_few_shot(
    folder: str | os.PathLike, speech_tokenizer: Any = None, *, audio_root: str | os.PathLike | None = None,
) -> dict[str, list[StspItem]]:
    """Meta's few-shot examples: ``folder/{t2t,t2s,s2t,s2s}.jsonl`` -> ``{direction: [StspItem]}``.

    Each line has ``prompt``, ``generation`` and ``sentiment``; a speech field is a wav path
    (relative to ``audio_root``, default the folder and its parents) of which, as in Meta's
    prompts, the prompt uses the first half of the samples and the continuation the second half,
    encoded with ``speech_tokenizer``. The items carry only ``halves`` (what
    :func:`build_stsp_prompt` reads). Missing files give no examples for that direction.

    Raises:
        UserError: ``path:line:`` for invalid JSON or a line without the three fields, or speech
            examples without a speech tokenizer (``--speech_tokenizer``).
    """
    from spiritlm.audio import load_audio
    from spiritlm.evals.judges import to_sentiment

    folder = Path(folder)
    roots = [Path(audio_root)] if audio_root else [folder, folder.parent, folder.parent.parent, folder.parent.parent.parent]
    pools: dict[str, list[StspItem]] = {}

    def encode_half(rel: str, first: bool, where: str) -> str:
        if speech_tokenizer is None:
            raise UserError(f"{where}: speech examples need a speech tokenizer (--speech_tokenizer)")
        cands = [Path(rel)] if Path(rel).is_absolute() else [r / rel for r in roots] + [r / "data" / rel for r in roots]
        path = next((c for c in cands if c.is_file()), cands[0])
        wav = load_audio(path)
        half = len(wav) // 2
        return speech_tokenizer.encode_string(wav[:half] if first else wav[half:])

    for d in DIRECTIONS:
        path = folder / f"{d}.jsonl"
        if not path.is_file():
            continue
        src, tgt = MODALITY[d[0]], MODALITY[d[2]]
        items = []
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise UserError(f"{where}: invalid JSON: {e.msg} (--shots_dir)") from None
                if not all(obj.get(k) for k in ("prompt", "generation", "sentiment")):
                    raise UserError(f"{where}: a few-shot line needs 'prompt', 'generation' and 'sentiment' (--shots_dir)")
                a = obj["prompt"] if src == "text" else encode_half(obj["prompt"], True, where)
                b = obj["generation"] if tgt == "text" else encode_half(obj["generation"], False, where)
                halves = {src: (a, b)} if src == tgt else {src: (a, ""), tgt: ("", b)}
                items.append(StspItem(f"{d}:{lineno}", to_sentiment(obj["sentiment"]), halves=halves))
        pools[d] = items
    return pools


# ---------------------------------------------------------------------------------------------
# Prompts
# ---------------------------------------------------------------------------------------------


def _marker(modality: str) -> str:
    from spiritlm.formats import SPEECH_MARKER, TEXT_MARKER

    return TEXT_MARKER if modality == "text" else SPEECH_MARKER


def render_pair(src: str, prompt: str, tgt: str, continuation: str) -> str:
    """One few-shot example: the prompt, the output marker when the modality changes, the continuation."""
    joint = _marker(tgt) if src != tgt else (" " if src == "text" else "")
    return _marker(src) + prompt + joint + continuation


def build_stsp_prompt(direction: str, target: StspItem, shots: Sequence[StspItem] = ()) -> str:
    """The prompt string of ``target`` in ``direction`` (``t2s`` …) after few-shot ``shots``.

    >>> t = StspItem("a", "positive", text="what a lovely day", speech="[Hu1][Hu2]")
    >>> build_stsp_prompt("t2s", t)
    '[Text]what a lovely day[Speech]'
    >>> s = StspItem("b", "negative", halves={"text": ("i hate", "this rain")})
    >>> build_stsp_prompt("t2t", t, [s])
    '[Text]i hate this rain[Text]what a lovely day'
    """
    from spiritlm.generation import build_prompt

    src, tgt = MODALITY[direction[0]], MODALITY[direction[2]]
    content = target.text if src == "text" else target.speech
    if content is None:
        raise ValueError(f"item {target.id} has no {src} prompt")
    lines = []
    for s in shots:
        a, b = s.halves[src], s.halves[tgt]
        lines.append(render_pair(src, a[0], tgt, b[1]))
    zero = build_prompt([(src, content)], tgt)
    return "".join(line + SHOT_SEPARATOR for line in lines) + zero


def draw_balanced_shots(pool: Sequence[StspItem], k: int, seed: int, target_id: str, need: Sequence[str]) -> list[StspItem]:
    """``k`` examples for ``target_id``: round-robin over the sentiments (balanced), shuffled, never the target.

    Only pool items with halves in every modality of ``need`` qualify. The draw depends on
    ``(seed, target_id)`` and the pool only.
    """
    if k <= 0:
        return []
    rng = random.Random(f"stsp:{seed}:{target_id}")
    by_label: dict[str, list[StspItem]] = {}
    for p in pool:
        if p.id != target_id and all(m in p.halves for m in need):
            by_label.setdefault(p.label, []).append(p)
    for v in by_label.values():
        rng.shuffle(v)
    labels = sorted(by_label)
    rng.shuffle(labels)
    out: list[StspItem] = []
    i = 0
    while len(out) < k and any(by_label.values()):
        lab = labels[i % len(labels)]
        if by_label[lab]:
            out.append(by_label[lab].pop())
        i += 1
    rng.shuffle(out)
    return out


def vocode(
    vocoder: Any, items: Sequence[str | dict], speaker: int | str = 0, stats: dict[str, int] | None = None
) -> tuple[dict[int, np.ndarray], list[str]]:
    """Waveforms of the items the vocoder accepts (``{index: wav}``) and one message per refused item.

    Each item is checked alone (``Vocoder.prepare``), so one unusable output (ids beyond the
    vocoder's tables; an expressive vocoder that stores no default pitch given HuBERT tokens
    only) is counted, not fatal. An output without pitch or style tokens is voiced with the
    vocoder's default codes and judged like any other; ``stats["filled"]`` (when given) counts them.
    """
    from spiritlm.errors import UserError as _UserError

    prepared, index, errors = [], [], []
    for i, u in enumerate(items):
        try:
            p = vocoder.prepare(u, speaker=speaker)
        except (_UserError, ValueError) as e:
            errors.append(str(e))
            continue
        prepared.append(p)
        index.append(i)
        if stats is not None and p.get("filled"):
            stats["filled"] = stats.get("filled", 0) + 1
    wavs = vocoder.synthesize_prepared(prepared) if prepared else []
    return dict(zip(index, wavs)), errors


# ---------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------


def independence_chance(gold: Sequence[str], judged: Sequence[str]) -> float:
    """``sum_c p_gold(c) * p_judged(c)``: the accuracy of judged labels independent of the gold ones.

    >>> independence_chance(["positive", "negative"], ["positive", "positive"])
    0.5
    """
    if not gold:
        return float("nan")
    pg, pj = Counter(gold), Counter(judged)
    return float(sum(pg[c] / len(gold) * pj[c] / len(judged) for c in pg))


def stsp_metrics(rows: Sequence[dict], *, seed: int = 0, n_resamples: int = 1000) -> dict[str, Any]:
    """Per-direction accuracy records and their average from prediction rows.

    Each row needs ``direction``, ``label`` (the prompt's) and ``judged`` (the continuation's).
    Returns ``{"accuracy_<dir>": metric(...), ..., "accuracy_avg": metric(...)}`` for the
    directions present, in :data:`DIRECTIONS` order; the average's interval resamples every
    direction's items independently and averages the resampled accuracies.
    """
    from spiritlm.evals.common import bootstrap_ci, metric

    out: dict[str, Any] = {}
    per: dict[str, np.ndarray] = {}
    chances = []
    for d in DIRECTIONS:
        rs = [r for r in rows if r["direction"] == d]
        if not rs:
            continue
        correct = np.array([float(r["judged"] == r["label"]) for r in rs])
        per[d] = correct
        chance = independence_chance([r["label"] for r in rs], [r["judged"] for r in rs])
        chances.append(chance)
        out[f"accuracy_{d}"] = metric(correct.mean(), bootstrap_ci(correct, n_resamples=n_resamples, seed=seed), chance, len(rs))
    if per:
        rng = np.random.default_rng(seed)
        stats = np.zeros(n_resamples)
        for v in per.values():
            idx = rng.integers(0, len(v), size=(n_resamples, len(v)))
            stats += v[idx].mean(1)
        stats /= len(per)
        avg = float(np.mean([v.mean() for v in per.values()]))
        low, high = np.percentile(stats, [2.5, 97.5])
        out["accuracy_avg"] = metric(avg, (float(low), float(high)), float(np.mean(chances)), sum(len(v) for v in per.values()),
                                     directions=list(per))
    return out


# ---------------------------------------------------------------------------------------------
# The task
# ---------------------------------------------------------------------------------------------


@dataclass
class StspConfig:
    """Settings of :func:`run_stsp`.

    Attributes:
        directions: which of ``t2t``, ``t2s``, ``s2t``, ``s2s`` to run.
        shots: few-shot examples per prompt (0: zero-shot).
        seed: seeds shot draws and sampling (row ``i`` samples with ``seed + i``).
        do_sample: sample (paper) or decode greedily.
        temperature: sampling temperature (paper: 0.8).
        top_p: nucleus mass (paper: 0.95).
        max_new_tokens_text: budget of a text continuation (tokens).
        max_new_tokens_speech: budget of a speech continuation (tokens; ~12 deduplicated HuBERT tokens a second).
        min_new_tokens: EOS forbidden before this many tokens (an empty continuation has no sentiment).
        max_items: evaluate at most this many prompts (0: all), taken balanced over labels in file order.
        batch_size: rows decoded together.
        speaker: vocoder speaker of speech outputs.
    """

    directions: tuple[str, ...] = DIRECTIONS
    shots: int = 0
    seed: int = 0
    do_sample: bool = True
    temperature: float = 0.8
    top_p: float = 0.95
    max_new_tokens_text: int = 40
    max_new_tokens_speech: int = 150
    min_new_tokens: int = 5
    max_items: int = 0
    batch_size: int = 16
    speaker: int | str = 0


def _take_balanced(items: Sequence[StspItem], n: int) -> list[StspItem]:
    if n <= 0 or n >= len(items):
        return list(items)
    by: dict[str, list[StspItem]] = {}
    for it in items:
        by.setdefault(it.label, []).append(it)
    out, i = [], 0
    labels = sorted(by)
    while len(out) < n:
        lab = labels[i % len(labels)]
        if by[lab]:
            out.append(by[lab].pop(0))
        i += 1
    keep = {it.id for it in out}
    return [it for it in items if it.id in keep]


def _stop_and_allowed(lm: Any, modality: str) -> tuple[Any, list[int]]:
    """Vocabulary mask of ``modality`` widened by its stop ids (markers, newline pieces), and those ids."""
    from spiritlm.evals.engine import text_stop_ids

    stops = text_stop_ids(lm.tokenizer)
    allowed = lm.allowed_tokens(modality).clone()
    for i in stops:
        if 0 <= i < allowed.numel():
            allowed[i] = True
    return allowed, stops


def run_stsp(
    model: Any,
    items: Sequence[StspItem],
    *,
    text_judge: Any = None,
    speech_judge: Any = None,
    shot_pool: Sequence[StspItem] | dict[str, Sequence[StspItem]] = (),
    cfg: StspConfig | None = None,
    out_dir: str | os.PathLike | None = None,
    judges_metrics: dict | None = None,
    extra_config: dict | None = None,
    progress: bool = False,
) -> Any:
    """Runs STSP on ``items`` with ``model`` (an :class:`spiritlm.evals.common.EvalModel`).

    Directions whose inputs or judge are missing (no text/speech prompt, no vocoder or speech
    judge for speech outputs, no text judge for text outputs) are skipped and listed under
    ``skipped_directions`` with the reason. An empty continuation (no text, or no speech token)
    is judged ``"(empty)"`` (wrong), and so is a speech output the vocoder refuses (counted in
    ``vocoder_errors``; a direction whose every output is refused is skipped with the message).
    A speech output without pitch/style tokens is voiced with the vocoder's default codes and
    judged (counted per direction in ``vocoder_filled``).

    Returns:
        :class:`spiritlm.evals.common.EvalResult` (task ``stsp``); written to ``out_dir`` when given.
    """
    from spiritlm.evals.common import EvalResult, write_eval_outputs
    from spiritlm.evals.engine import Throughput
    from spiritlm.formats import split_modalities

    cfg = cfg or StspConfig()
    bad = [d for d in cfg.directions if d not in DIRECTIONS]
    if bad:
        raise UserError(f"unknown STSP directions {bad} (choose from {', '.join(DIRECTIONS)}) (--directions)")
    lm = model.lm
    items = _take_balanced(list(items), cfg.max_items)
    if not items:
        raise UserError("no STSP prompt with a sentiment label (--manifest)")
    skipped: dict[str, str] = {}
    vocoder_errors: dict[str, dict] = {}
    vocoder_filled: dict[str, int] = {}  # speech outputs without pitch/style tokens, voiced with the vocoder's defaults
    too_long: dict[str, int] = {}
    rows: list[dict] = []
    throughput = Throughput()
    t_start = time.time()
    for d in cfg.directions:
        src, tgt = MODALITY[d[0]], MODALITY[d[2]]
        if tgt == "text" and text_judge is None:
            skipped[d] = "no text sentiment judge"
            continue
        if tgt == "speech" and (model.vocoder is None or speech_judge is None):
            skipped[d] = "no vocoder" if model.vocoder is None else "no speech sentiment judge"
            continue
        todo = [it for it in items if (it.text if src == "text" else it.speech)]
        if not todo:
            skipped[d] = f"no {src} prompts"
            continue
        need = sorted({src, tgt})
        pool_d = shot_pool.get(d, ()) if isinstance(shot_pool, dict) else shot_pool
        shots = {it.id: draw_balanced_shots(pool_d, cfg.shots, cfg.seed, it.id, need) for it in todo}
        if cfg.shots and any(len(v) < cfg.shots for v in shots.values()):
            skipped[d] = f"fewer than {cfg.shots} examples with {'+'.join(need)} halves in the shot pool"
            continue
        allowed, stops = _stop_and_allowed(lm, tgt)
        budget = cfg.max_new_tokens_text if tgt == "text" else cfg.max_new_tokens_speech
        ctx = lm.config.max_seq_len
        prompts, kept = [], []
        for it in todo:
            # shots are dropped from the end until the continuation's budget fits in the context
            while True:
                ids = lm.tokenizer.encode(build_stsp_prompt(d, it, shots[it.id]), bos=True, eos=False)
                if len(ids) + budget <= ctx or not shots[it.id]:
                    break
                shots[it.id] = shots[it.id][:-1]
            if len(ids) + max(cfg.min_new_tokens, 1) > ctx:
                too_long[d] = too_long.get(d, 0) + 1
                continue
            prompts.append(ids)
            kept.append(it)
        todo = kept
        if not todo:
            skipped[d] = f"every prompt is longer than the model's context ({ctx} tokens)"
            continue
        outs = lm.generate_batch_ids(
            prompts, allowed=allowed, max_new_tokens=budget, do_sample=cfg.do_sample, temperature=cfg.temperature,
            top_p=cfg.top_p, seed=cfg.seed, min_new_tokens=cfg.min_new_tokens, batch_size=cfg.batch_size,
            stop_ids=stops, progress=progress,
        )
        throughput.add(getattr(lm, "last_stats", None))
        stop_set = set(stops) | {lm.tokenizer.eos_id}
        texts = []
        for ids in outs:
            while ids and ids[-1] in stop_set:
                ids = ids[:-1]
            texts.append(lm.tokenizer.decode(ids))
        if tgt == "text":
            outputs = [" ".join(s.text for s in split_modalities(t) if s.modality == "text").strip() for t in texts]
        else:
            outputs = ["".join(s.render() for s in split_modalities(t) if s.modality == "speech") for t in texts]
        # an empty continuation has no sentiment: judged "(empty)", which is never right
        nonempty = [i for i, o in enumerate(outputs) if o]
        if tgt == "text":
            pred = dict(zip(nonempty, text_judge.predict([outputs[i] for i in nonempty]) if nonempty else []))
        else:
            stats: dict[str, int] = {}
            got, errors = vocode(model.vocoder, [outputs[i] for i in nonempty], cfg.speaker, stats)
            if stats.get("filled"):
                vocoder_filled[d] = stats["filled"]
            if nonempty and not got:
                skipped[d] = f"the vocoder refused every output: {errors[0]}"
                continue
            if errors:
                vocoder_errors[d] = {"count": len(errors), "first": errors[0]}
            keys = sorted(got)
            pred = dict(zip([nonempty[k] for k in keys], speech_judge.predict([got[k] for k in keys]) if keys else []))
        judged = [pred.get(i, EMPTY) for i in range(len(outputs))]
        for i, (it, out, j) in enumerate(zip(todo, outputs, judged)):
            rows.append({
                "id": it.id, "direction": d, "label": it.label, "shot_ids": [s.id for s in shots[it.id]],
                "seed": cfg.seed + i if cfg.do_sample else None, "output": out, "judged": j,
                "score": float(j == it.label), "n_tokens": len(outs[i]),
            })
    if not rows:
        raise UserError(f"STSP ran no direction: {'; '.join(f'{k}: {v}' for k, v in skipped.items())}")
    metrics = stsp_metrics(rows, seed=cfg.seed)
    metrics["skipped_directions"] = skipped
    metrics["vocoder_errors"] = vocoder_errors
    metrics["vocoder_filled"] = vocoder_filled
    metrics["skipped_too_long"] = too_long
    if cfg.shots:
        used = [len(r["shot_ids"]) for r in rows]
        metrics["shots_used"] = {"min": min(used), "mean": round(float(np.mean(used)), 3), "max": max(used)}
    metrics["labels"] = dict(sorted(Counter(it.label for it in items).items()))
    metrics["judged_distribution"] = {
        d: dict(sorted(Counter(r["judged"] for r in rows if r["direction"] == d).items())) for d in DIRECTIONS
        if any(r["direction"] == d for r in rows)
    }
    metrics["judge_ceilings"] = judge_ceilings(items, text_judge, speech_judge, model.vocoder, cfg.speaker)
    if judges_metrics:
        metrics["judges"] = {k: v for k, v in judges_metrics.items() if k in ("asr", "text-sentiment", "speech-sentiment")}
    metrics["config"] = {"model": getattr(model, "name", ""), **asdict(cfg), "directions": list(cfg.directions), **(extra_config or {})}
    thr = throughput.as_dict()
    thr["wall_seconds"] = round(time.time() - t_start, 2)
    result = EvalResult("stsp", metrics, rows, thr)
    if out_dir is not None:
        write_eval_outputs(out_dir, result)
    return result


def judge_ceilings(items: Sequence[StspItem], text_judge: Any = None, speech_judge: Any = None, vocoder: Any = None, speaker: int | str = 0) -> dict:
    """The judges' own accuracy on the prompts (what a perfectly preserving continuation could score).

    ``text``: text judge on the written prompts; ``speech_audio``: speech judge on the prompts'
    audio; ``speech_vocoded``: speech judge on the vocoder's rendering of the prompts' units
    (the ceiling of the speech-output directions).
    """
    from spiritlm.audio import AudioError, load_audio

    out: dict[str, Any] = {}
    if text_judge is not None:
        its = [it for it in items if it.text]
        if its:
            pred = text_judge.predict([it.text for it in its])
            out["text"] = {"accuracy": float(np.mean([p == it.label for p, it in zip(pred, its)])), "n": len(its)}
    if speech_judge is not None:
        its, wavs = [], []
        for it in items:
            if it.audio:
                try:
                    wavs.append(load_audio(it.audio))
                    its.append(it)
                except AudioError:
                    continue
        if its:
            pred = speech_judge.predict(wavs)
            out["speech_audio"] = {"accuracy": float(np.mean([p == it.label for p, it in zip(pred, its)])), "n": len(its)}
        if vocoder is not None:
            its = [it for it in items if it.speech]
            got, errors = vocode(vocoder, [it.speech for it in its], speaker) if its else ({}, [])
            if got:
                keys = sorted(got)
                pred = speech_judge.predict([got[k] for k in keys])
                out["speech_vocoded"] = {"accuracy": float(np.mean([p == its[k].label for p, k in zip(pred, keys)])), "n": len(keys),
                                         "vocoder_errors": len(errors)}
    return out


# ---------------------------------------------------------------------------------------------
# Command
# ---------------------------------------------------------------------------------------------


def resolve_judge_dirs(judges: str | None, **overrides: str | None) -> dict[str, str | None]:
    """Judge folders: ``judges/{asr,text_sentiment,speech_sentiment}`` unless a flag names another (any HF folder)."""
    from spiritlm.evals.common import JUDGE_DIRS

    out: dict[str, str | None] = {}
    for kind, sub in JUDGE_DIRS.items():
        flag = overrides.get(sub.replace("_sentiment", "") + "_judge")
        path = flag or (str(Path(judges) / sub) if judges else None)
        out[kind] = path if path and Path(path).is_dir() else None
        if flag and not Path(flag).is_dir():
            raise UserError(f"{flag}: no such judge directory (--{sub.replace('_sentiment', '')}_judge)")
    return out


def stsp_command(
    model: str,
    manifest: str,
    out: str,
    judges: str | None = None,
    units: str | None = None,
    vocoder: str | None = None,
    speech_tokenizer: str | None = None,
    text_judge: str | None = None,
    speech_judge: str | None = None,
    split: str = "test",
    shot_split: str = "train",
    shots: int = 0,
    seed: int = 0,
    directions: list[str] = list(DIRECTIONS),
    do_sample: bool = True,
    temperature: float = 0.8,
    top_p: float = 0.95,
    max_new_tokens_text: int = 40,
    max_new_tokens_speech: int = 150,
    max_items: int = 0,
    batch_size: int = 16,
    audio_root: str | None = None,
    shots_dir: str | None = None,
    speaker: str = "0",
    device: str = "cpu",
    threads: int = 0,
    progress: bool = True,
) -> None:
    """Speech-Text Sentiment Preservation: sentiment kept by continuations in T→T, T→S, S→T, S→S.

    Example: ``spiritlm eval stsp --model demo_out/lm/tiny-interleaved --vocoder demo_out/vocoder
    --manifest demo_out/corpus/manifest.jsonl --units demo_out/units.jsonl --judges demo_out/judges --out demo_out/eval/stsp``

    Args:
        model: the LM folder (Hugging Face, run or checkpoint folder).
        manifest: the synthetic corpus' manifest (``sentiment`` labels) or one of Meta's STSP manifests.
        out: output folder (metrics.json, predictions.jsonl).
        judges: folder of ``spiritlm eval judges`` (text_sentiment/, speech_sentiment/, judges_metrics.json).
        units: Meta units JSONL of the prompts' audio (speech prompts; keyed by id or audio path).
        vocoder: vocoder folder (needed by T→S and S→S).
        speech_tokenizer: speech tokenizer folder (speech prompts from audio when --units lacks them).
        text_judge: a text sentiment judge folder (ours or a Hugging Face text classifier) instead of --judges'.
        speech_judge: a speech sentiment judge folder (ours or a Hugging Face audio classifier) instead of --judges'.
        split: the prompts' split in a corpus manifest (ignored for Meta's files, which are one split each).
        shot_split: split the few-shot examples come from.
        shots: few-shot examples per prompt (0: zero-shot).
        seed: seed of the shot draws and of sampling.
        directions: any of t2t, t2s, s2t, s2s.
        do_sample: sample (temperature, top_p) or decode greedily.
        temperature: sampling temperature (paper: 0.8).
        top_p: nucleus mass (paper: 0.95).
        max_new_tokens_text: budget of text continuations (tokens).
        max_new_tokens_speech: budget of speech continuations (tokens).
        max_items: at most this many prompts, balanced over labels (0: all).
        batch_size: rows decoded together.
        audio_root: folder Meta's ``wav_path`` values are relative to (default: the manifest's folder and its parents).
        shots_dir: Meta's few-shot folder (``{t2t,t2s,s2t,s2s}.jsonl``) for few-shot runs on Meta's manifests.
        speaker: vocoder speaker of speech outputs (row number or name).
        device: cpu or cuda.
        threads: torch CPU threads (0: leave torch's setting).
        progress: show progress bars.
    """
    from spiritlm.evals.common import check_model_paths, load_eval_model, load_manifest_items, load_units

    # files and flags first: a typo costs a second, not the imports of torch and the model
    if not Path(manifest).is_file():
        raise UserError(f"{manifest}: no such manifest (--manifest)")
    meta_layout = is_meta_stsp_manifest(manifest)
    # a bad line is named (path:line) before the model loads
    manifest_items = None if meta_layout else load_manifest_items(manifest, split)
    bad = [d for d in directions if d not in DIRECTIONS]
    if bad:
        raise UserError(f"unknown STSP directions {bad} (choose from {', '.join(DIRECTIONS)}) (--directions)")
    for value, flag, low in ((shots, "--shots", 0), (max_items, "--max_items", 0), (batch_size, "--batch_size", 1),
                             (max_new_tokens_text, "--max_new_tokens_text", 1), (max_new_tokens_speech, "--max_new_tokens_speech", 1)):
        if value < low:
            raise UserError(f"{flag} must be >= {low}, got {value} ({flag})")
    dirs = resolve_judge_dirs(judges, text_judge=text_judge, speech_judge=speech_judge)
    if judges and not Path(judges).is_dir():
        raise UserError(f"{judges}: no such judges directory (train one with `spiritlm eval judges`) (--judges)")
    check_model_paths(model, vocoder=vocoder, speech_tokenizer=speech_tokenizer)
    units_map = load_units(units) if units else None

    from spiritlm.evals.judges import load_judges_metrics, load_speech_sentiment_judge, load_text_sentiment_judge

    if threads:
        import torch

        torch.set_num_threads(threads)
    em = load_eval_model(model, vocoder=vocoder, speech_tokenizer=speech_tokenizer, device=device)
    tj = load_text_sentiment_judge(dirs["text-sentiment"], device) if dirs["text-sentiment"] else None
    sj = load_speech_sentiment_judge(dirs["speech-sentiment"], device) if dirs["speech-sentiment"] else None
    problems: list[dict] = []
    pool: list[StspItem] | dict[str, list[StspItem]] = []
    if meta_layout:
        items, problems = read_meta_stsp(manifest, audio_root=audio_root, units=units_map, speech_tokenizer=em.speech_tokenizer, expressive=em.expressive)
        if shots:
            if not shots_dir:
                raise UserError(f"{manifest}: few-shot STSP on Meta's files needs Meta's few-shot folder (--shots_dir)")
            if not Path(shots_dir).is_dir():
                raise UserError(f"{shots_dir}: no such folder (--shots_dir)")
            pool = read_meta_few_shot(shots_dir, em.speech_tokenizer, audio_root=audio_root)
    else:
        items, n_bad = items_from_manifest(manifest_items, units_map, em.expressive)
        if n_bad:
            problems.append({"error": f"{n_bad} prompts have no units in {units}: text directions only"})
        if shots:
            pool, _ = items_from_manifest(load_manifest_items(manifest, shot_split), units_map, em.expressive)
    speaker_arg: int | str = int(speaker) if str(speaker).isdigit() else speaker
    cfg = StspConfig(
        directions=tuple(directions), shots=shots, seed=seed, do_sample=do_sample, temperature=temperature, top_p=top_p,
        max_new_tokens_text=max_new_tokens_text, max_new_tokens_speech=max_new_tokens_speech, max_items=max_items,
        batch_size=batch_size, speaker=speaker_arg,
    )
    extra = {"manifest": str(manifest), "units": units, "vocoder": vocoder, "judges": {k: v for k, v in dirs.items() if k != "asr"},
             "skipped_items": problems}
    run_stsp(em, items, text_judge=tj, speech_judge=sj, shot_pool=pool, cfg=cfg, out_dir=out,
             judges_metrics=load_judges_metrics(judges) if judges else None, extra_config=extra, progress=progress)
