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

Protocols (:class:`StspProtocol`, :data:`PROTOCOLS`; ``--protocol``): ``meta`` (the default)
decodes, prompts and judges as Meta's released script does; ``ours`` is the faster setup this
repository used first. Every setting that differs lives in the protocol; evals/README.md lists
both with Meta's source of each.

Prompts (:func:`build_stsp_prompt`): zero-shot, the prompt in its modality followed by the
output modality's marker when it differs (``[Text]the food was great[Speech]``), as Meta's
``Spiritlm._build_prompt``. Few-shot under ``meta``: ``3 * ceil(k / 3)`` examples drawn once per
run and direction, grouped negative → neutral → positive (:func:`draw_meta_shots`), each
``[Src]prompt[Tgt]continuation`` (the inner marker kept in T→T and S→S) followed by a newline,
then the target written like the examples' prompts. Under ``ours``: ``k`` examples per target,
sentiments balanced round-robin and shuffled (:func:`draw_balanced_shots`), separated by their
markers only. Examples come from Meta's few-shot files (:func:`read_meta_few_shot`) or, on the
synthetic corpus, from TRAIN-split utterances cut at the word boundary nearest their middle (first
half the prompt, second half the continuation, in the direction's modalities); shots are dropped
from the end until the continuation's budget fits the model's context.

Decoding: sampling with temperature 0.8, top-p 0.95 (both protocols; the paper's setting and
the current ``predict_stsp.py`` as issue 21 quotes it: the revision we could read, commit
9790966, used temperature 0.9 and 200 new tokens) and top-k 50 under ``meta`` (transformers' default, which Meta's
``GenerationConfig`` leaves on); row ``i`` seeded ``seed + row``. ``meta``: text continuations
of up to 50 tokens end at EOS only (the markers are banned, a newline is generated like any
text piece), speech continuations have EOS banned and always run 300 tokens. ``ours``: 40 / 150
tokens, ending at EOS, a marker or a newline, EOS forbidden for the first 5.

Chance level of a direction: the accuracy the judged labels would reach if they were
independent of the prompts' labels, ``sum_c p_prompt(c) * p_judged(c)`` (1/3 for balanced
prompts and any judge; a model that always writes positive text gets exactly its chance).
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from jsonargparse.typing import NonNegativeFloat, NonNegativeInt, PositiveInt

from spiritlm.cli import TopP, flags_from
from spiritlm.constants import STREAM_RATES
from spiritlm.errors import UserError
from spiritlm.evals.prompts import fit_prompt, join_prompt, render_pair

if TYPE_CHECKING:
    from spiritlm.evals.common import EvalModel, EvalResult

logger = logging.getLogger(__name__)

DIRECTIONS = ("t2t", "t2s", "s2t", "s2s")
MODALITY = {"t": "text", "s": "speech"}
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
                    obj = json.loads(line)  # jsonl: the first line of Meta's STSP manifest (its layout, not ours)
                except json.JSONDecodeError:
                    return False
                return isinstance(obj, dict) and ("wav_path" in obj or "emotion" in obj or "asr" in obj) and "words" not in obj
    return False


def split_units_at(units_row: dict, seconds: float) -> tuple[dict, dict]:
    """Cuts a Meta unit dict at ``seconds``: each stream at ``round(seconds * rate)`` frames
    (HuBERT 25 Hz, pitch 12.5 Hz, style 1 Hz; the style frame that straddles the cut goes to both).
    """
    rates = STREAM_RATES
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
    from spiritlm.judges import to_sentiment

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


def _meta_roots(path: Path, audio_root: str | os.PathLike | None) -> list[Path]:
    return [Path(audio_root)] if audio_root else [path.parent, path.parent.parent, path.parent.parent.parent]


def _resolve_wav(rel: str, roots: Sequence[Path]) -> str:
    """A ``wav_path`` against the data roots (each with and without ``data/``); the first candidate if none exists."""
    r = Path(rel)
    cands = [r] if r.is_absolute() else [root / r for root in roots] + [root / "data" / r for root in roots]
    return next((str(c) for c in cands if c.is_file()), str(cands[0]))


def meta_audio_paths(path: str | os.PathLike, audio_root: str | os.PathLike | None = None) -> list[tuple[int, str]]:
    """``(line, resolved wav path)`` of every record of a Meta STSP manifest that names a ``wav_path``.

    Raises:
        UserError: ``path:line:`` for invalid JSON.
    """
    from spiritlm.evals.stsp_score import read_jsonl

    roots = _meta_roots(Path(path), audio_root)
    return [(lineno, _resolve_wav(obj[META_AUDIO_KEY], roots)) for lineno, obj in read_jsonl(path, "--manifest")
            if isinstance(obj, dict) and obj.get(META_AUDIO_KEY)]


def read_meta_stsp(
    path: str | os.PathLike, *, audio_root: str | os.PathLike | None = None, units: dict[str, dict] | None = None,
    speech_tokenizer: Any = None, expressive: bool = False, meta_labels: bool = False,
) -> tuple[list[StspItem], list[dict]]:
    """Reads one of Meta's STSP manifests (see the module docstring).

    ``meta_labels``: emotions map to sentiments by Meta's own 6-label, case-sensitive map (an
    emotion outside it is dropped, as Meta's scorer drops it); otherwise by :func:`to_sentiment`
    (any case, a few more emotion names).

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
    from spiritlm.judges import LABELS, to_sentiment

    from spiritlm.evals.stsp_score import META_EMOTION_TO_SENTIMENT, read_jsonl

    path = Path(path)
    roots = _meta_roots(path, audio_root)
    items: list[StspItem] = []
    problems: list[dict] = []
    for lineno, obj in read_jsonl(path, "--manifest"):
        uid = str(obj.get("id", lineno))
        raw = next((obj[k] for k in META_LABEL_KEYS if obj.get(k)), None)
        if meta_labels and not obj.get("sentiment") and raw is not None:
            label = META_EMOTION_TO_SENTIMENT.get(raw)  # Meta's 6-emotion map, case-sensitive
        else:
            label = to_sentiment(raw) if raw is not None else None
        if label not in LABELS:
            problems.append({"line": lineno, "id": uid, "error": f"no sentiment/emotion label mapping to {LABELS} (got {raw!r})"})
            continue
        text = next((obj[k] for k in META_TEXT_KEYS if isinstance(obj.get(k), str) and obj[k].strip()), None)
        audio = _resolve_wav(obj[META_AUDIO_KEY], roots) if obj.get(META_AUDIO_KEY) else None
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
    from spiritlm.judges import to_sentiment

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
                    obj = json.loads(line)  # jsonl: Meta's few-shot STSP files
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


def stsp_prompt_parts(direction: str, target: StspItem, shots: Sequence[StspItem] = (),
                      protocol: StspProtocol | None = None) -> tuple[list[str], str, str]:
    """``(examples, the target after examples, the target alone)``: the parts of :func:`build_stsp_prompt`
    for :func:`~spiritlm.evals.prompts.fit_prompt` (the separator is the protocol's)."""
    from spiritlm.generation import build_prompt

    proto = protocol or PROTOCOLS["meta"]
    src, tgt = MODALITY[direction[0]], MODALITY[direction[2]]
    content = target.text if src == "text" else target.speech
    if content is None:
        raise ValueError(f"item {target.id} has no {src} prompt")
    lines = [render_pair(src, s.halves[src][0], tgt, s.halves[tgt][1], proto.inner_markers) for s in shots]
    alone = build_prompt([(src, content)], tgt)
    return lines, render_pair(src, content, tgt, "", inner_markers=True) if proto.inner_markers else alone, alone


def build_stsp_prompt(direction: str, target: StspItem, shots: Sequence[StspItem] = (), protocol: StspProtocol | None = None) -> str:
    """The prompt string of ``target`` in ``direction`` (``t2s`` …) after few-shot ``shots``.

    Zero-shot, both protocols write Meta's ``Spiritlm._build_prompt``: the prompt in its
    modality, then the output modality's marker when it differs. Few-shot, each example is
    :func:`~spiritlm.evals.prompts.render_pair` followed by the protocol's separator; with
    ``inner_markers`` (Meta) the target is written like the examples' prompts, ``[Src]content[Tgt]``
    even within a modality, so the model continues the pattern it was shown.

    >>> t = StspItem("a", "positive", text="what a lovely day", speech="[Hu1][Hu2]")
    >>> build_stsp_prompt("t2s", t)
    '[Text]what a lovely day[Speech]'
    >>> s = StspItem("b", "negative", halves={"text": ("i hate", "this rain")})
    >>> build_stsp_prompt("t2t", t, [s], PROTOCOLS["ours"])
    '[Text]i hate this rain[Text]what a lovely day'
    >>> build_stsp_prompt("t2t", t, [s], PROTOCOLS["meta"])
    '[Text]i hate[Text]this rain\\n[Text]what a lovely day[Text]'
    """
    proto = protocol or PROTOCOLS["meta"]
    lines, after, alone = stsp_prompt_parts(direction, target, shots, proto)
    return join_prompt(lines, after if lines else alone, proto.shot_separator)


def draw_meta_shots(pool: Sequence[StspItem], k: int, seed: int, direction: str, need: Sequence[str]) -> list[StspItem]:
    """Meta's few-shot draw: ``ceil(k / 3)`` examples of each sentiment, grouped negative → neutral → positive.

    As ``df.groupby("sentiment").sample(n=ceil(k / 3))`` in Meta's ``build_few_shot_prompt``:
    ``3 * ceil(k / 3)`` examples when the pool has the three sentiments (k = 1 gives 3), groups
    in sorted label order, random order within a group; drawn once per run and direction (the
    same examples before every target), seeded by ``(seed, direction)``. Only pool items with
    halves in every modality of ``need`` qualify.

    Raises:
        ValueError: a sentiment has fewer than ``ceil(k / 3)`` examples (pandas refuses too).
    """
    if k <= 0:
        return []
    per = -(-k // 3)
    rng = random.Random(f"stsp-meta:{seed}:{direction}")
    by_label: dict[str, list[StspItem]] = {}
    for p in pool:
        if all(m in p.halves for m in need):
            by_label.setdefault(p.label, []).append(p)
    out: list[StspItem] = []
    for lab in sorted(by_label):
        if len(by_label[lab]) < per:
            raise ValueError(f"{len(by_label[lab])} {lab} examples, {per} needed for {k} shots (3 × ceil(k/3) in Meta's draw)")
        out += rng.sample(by_label[lab], per)
    return out


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


@dataclass(frozen=True)
class StspProtocol:
    """Every setting that decides how STSP continuations are made and judged, in one place.

    Two presets (:data:`PROTOCOLS`): ``meta`` reproduces Meta's released STSP script
    (``spiritlm/eval/stsp/predict_stsp.py`` with ``Spiritlm.generate``, transformers sampling)
    item for item, up to the random draws; ``ours`` is the faster setup this repository used
    before, kept for tiny models. evals/README.md lists both beside each other.

    Attributes:
        name: ``meta`` or ``ours``.
        max_new_tokens_text / max_new_tokens_speech: continuation budgets (tokens).
        text_stops: ``eos``: a text continuation ends at EOS only (markers are banned, newlines
            are kept, as Meta's ``bad_words_ids``); ``eos_marker_newline``: also at a marker or a
            newline piece (ours; an initial newline then gives an empty answer).
        speech_eos: False: EOS is banned in speech outputs, so a speech continuation always uses
            its whole budget (Meta: EOS is among the non-speech ids its API bans); True: a speech
            continuation may end at EOS, a marker or a newline (ours).
        min_new_tokens: EOS forbidden before this many tokens (Meta: 0, transformers' default).
        do_sample, temperature, top_p, top_k: sampling (Meta: 0.8, 0.95 and transformers' default
            top-k 50; ours: no top-k).
        speaker: vocoder speaker of speech outputs (Meta: 2; a vocoder with fewer speakers falls
            back to 0 with a note in ``metrics.json``).
        shot_separator: string after each few-shot example (Meta: ``\\n``; ours: none).
        inner_markers: a same-modality example puts its modality's marker before the
            continuation (Meta: ``[Text]p[Text]c`` in T→T, ``[Speech]u[Speech]v`` in S→S).
        shot_draw: ``meta``: ``3 * ceil(k / 3)`` examples drawn once per run and direction,
            ``ceil(k / 3)`` of each sentiment, grouped negative → neutral → positive (pandas'
            ``groupby("sentiment").sample``); ``ours``: ``k`` per target, round-robin over the
            sentiments, shuffled, never the target.
        judge_empty: True: an empty text continuation goes to the text classifier like any other
            (Meta's pipeline classifies the empty string); False: judged ``(empty)``, wrong.
        one_clip_at_a_time: the speech classifier scores each clip alone (Meta) instead of in
            zero-padded batches (padding changes a wav2vec2-style classifier's output).
    """

    name: str
    max_new_tokens_text: int
    max_new_tokens_speech: int
    text_stops: str
    speech_eos: bool
    min_new_tokens: int
    do_sample: bool
    temperature: float
    top_p: float
    top_k: int
    speaker: int | str
    shot_separator: str
    inner_markers: bool
    shot_draw: str
    judge_empty: bool
    one_clip_at_a_time: bool


#: The two protocols of ``spiritlm eval stsp --protocol``; ``meta`` is the default.
PROTOCOLS: dict[str, StspProtocol] = {
    "meta": StspProtocol(
        name="meta", max_new_tokens_text=50, max_new_tokens_speech=300, text_stops="eos", speech_eos=False,
        min_new_tokens=0, do_sample=True, temperature=0.8, top_p=0.95, top_k=50, speaker=2, shot_separator="\n",
        inner_markers=True, shot_draw="meta", judge_empty=True, one_clip_at_a_time=True,
    ),
    "ours": StspProtocol(
        name="ours", max_new_tokens_text=40, max_new_tokens_speech=150, text_stops="eos_marker_newline", speech_eos=True,
        min_new_tokens=5, do_sample=True, temperature=0.8, top_p=0.95, top_k=0, speaker=0, shot_separator="",
        inner_markers=False, shot_draw="ours", judge_empty=False, one_clip_at_a_time=False,
    ),
}


def get_protocol(name: str) -> StspProtocol:
    """The preset called ``name`` (``meta`` or ``ours``); a one-line UserError otherwise."""
    if name not in PROTOCOLS:
        raise UserError(f"unknown STSP protocol {name!r} (choose from {', '.join(PROTOCOLS)}) (--protocol)")
    return PROTOCOLS[name]


@dataclass
class StspConfig:
    """Settings of :func:`run_stsp`: a protocol (:data:`PROTOCOLS`) and what overrides it.

    Attributes:
        directions: which of ``t2t``, ``t2s``, ``s2t``, ``s2s`` to run.
        shots: few-shot examples per prompt (0: zero-shot; Meta's draw rounds up to a multiple of 3).
        seed: seed of the shot draws and of sampling (row ``i`` samples with ``seed + i``).
        protocol: meta (Meta's released script: 50/300 tokens, EOS-only text stops, speech EOS banned, top-k 50,
            speaker 2, newline-separated few-shot examples drawn once per run) or ours (faster; evals/README.md).
        do_sample: sample or decode greedily (default: the protocol's, sampling).
        temperature: sampling temperature (default: the protocol's, 0.8 as the paper and Meta's script).
        top_p: nucleus mass (default: the protocol's, 0.95).
        top_k: keep the k likeliest tokens (default: the protocol's: meta 50, ours 0 = off).
        max_new_tokens_text: budget of text continuations (default: meta 50, ours 40).
        max_new_tokens_speech: budget of speech continuations (default: meta 300, ours 150).
        min_new_tokens: EOS forbidden before this many tokens (default: the protocol's: meta 0, ours 5).
        max_items: at most this many prompts, balanced over labels in file order (default: all).
        batch_size: rows decoded together.
        speaker: vocoder speaker of speech outputs (default: the protocol's).

    A setting left None keeps the protocol's value; anything else overrides it (recorded in
    ``metrics.json`` ``config.protocol_overrides``). The fields with a flag are ``spiritlm eval
    stsp``'s (:func:`spiritlm.cli.flags_from`): one declaration.
    """

    directions: tuple[str, ...] = DIRECTIONS
    shots: NonNegativeInt = 0
    seed: int = 0
    protocol: str = "meta"
    do_sample: bool | None = None
    temperature: NonNegativeFloat | None = None
    top_p: TopP | None = None
    top_k: NonNegativeInt | None = None
    max_new_tokens_text: PositiveInt | None = None
    max_new_tokens_speech: PositiveInt | None = None
    min_new_tokens: int | None = None
    max_items: PositiveInt | None = None
    batch_size: PositiveInt = 16
    speaker: int | str | None = None

    def settings(self) -> StspProtocol:
        """The protocol with this config's overrides applied."""
        base = get_protocol(self.protocol)
        return replace(base, **self.overrides())

    def overrides(self) -> dict[str, Any]:
        names = ("do_sample", "temperature", "top_p", "top_k", "max_new_tokens_text", "max_new_tokens_speech", "min_new_tokens", "speaker")
        base = get_protocol(self.protocol)
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None and getattr(self, n) != getattr(base, n)}


def _take_balanced(items: Sequence[StspItem], n: int | None) -> list[StspItem]:
    if not n or n >= len(items):
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


def _stop_and_allowed(lm: Any, modality: str, proto: StspProtocol) -> tuple[Any, list[int]]:
    """The vocabulary mask of a ``modality`` continuation under ``proto``, and the ids that end it (besides EOS).

    ``ours``: the modality's tokens widened by the markers and newline pieces, which end it.
    ``meta``: the modality's tokens only (markers banned; newline pieces are text pieces, kept
    and not stopping), nothing but EOS ends a text continuation, and a speech continuation has
    EOS banned too (it runs its whole budget).
    """
    from spiritlm.evals.engine import text_stop_ids

    allowed = lm.allowed_tokens(modality).clone()
    eos = lm.tokenizer.eos_id
    if modality == "speech" and not proto.speech_eos and eos is not None and 0 <= eos < allowed.numel():
        allowed[eos] = False
    if proto.text_stops == "eos" and modality == "text" or modality == "speech" and not proto.speech_eos:
        return allowed, []
    stops = text_stop_ids(lm.tokenizer)
    for i in stops:
        if 0 <= i < allowed.numel():
            allowed[i] = True
    return allowed, stops


def _missing_for(direction: str, model: Any, text_judge: Any, speech_judge: Any) -> str | None:
    """Why ``direction`` cannot be judged (no judge or vocoder for its output), or None."""
    if MODALITY[direction[2]] == "text":
        return "no text sentiment judge" if text_judge is None else None
    if model.vocoder is None or speech_judge is None:
        return "no vocoder" if model.vocoder is None else "no speech sentiment judge"
    return None


def _direction_shots(d: str, todo: Sequence[StspItem], shot_pool: Sequence[StspItem] | dict[str, Sequence[StspItem]],
                     cfg: StspConfig, proto: StspProtocol) -> dict[str, list[StspItem]] | str:
    """Each target's few-shot examples (``{item id: examples}``) by the protocol's draw, or why there are none."""
    need = sorted({MODALITY[d[0]], MODALITY[d[2]]})
    pool_d = shot_pool.get(d, ()) if isinstance(shot_pool, dict) else shot_pool
    if proto.shot_draw == "meta":
        try:
            drawn = draw_meta_shots(pool_d, cfg.shots, cfg.seed, d, need)
        except ValueError as e:
            return f"few-shot draw: {e}"
        if cfg.shots and not drawn:
            return f"no examples with {'+'.join(need)} halves in the shot pool"
        return {it.id: list(drawn) for it in todo}
    shots = {it.id: draw_balanced_shots(pool_d, cfg.shots, cfg.seed, it.id, need) for it in todo}
    if cfg.shots and any(len(v) < cfg.shots for v in shots.values()):
        return f"fewer than {cfg.shots} examples with {'+'.join(need)} halves in the shot pool"
    return shots


def _direction_prompts(lm: Any, d: str, todo: Sequence[StspItem], shots: dict[str, list[StspItem]], proto: StspProtocol,
                       budget: int) -> tuple[list[list[int]], list[StspItem], int]:
    """``(prompt ids, the items kept, how many were longer than the context)``; ``shots`` is cut to
    the examples each prompt holds (dropped from the end until the continuation's budget fits)."""
    ctx = lm.config.max_seq_len
    prompts, kept, too_long = [], [], 0
    for it in todo:
        lines, after, alone = stsp_prompt_parts(d, it, shots[it.id], proto)
        ids, k = fit_prompt(lm.tokenizer, lines, after, max_len=ctx, reserve=budget, separator=proto.shot_separator, alone=alone)
        shots[it.id] = shots[it.id][:k]
        if len(ids) + max(proto.min_new_tokens, 1) > ctx:
            too_long += 1
            continue
        prompts.append(ids)
        kept.append(it)
    return prompts, kept, too_long


def _continuations(tokenizer: Any, outs: Sequence[Sequence[int]], stops: Sequence[int], tgt: str, proto: StspProtocol) -> list[str]:
    """Generated ids -> what is judged: the text (Meta: the decoded continuation, stripped; ours: its
    text segments) or the speech token string of a ``tgt`` continuation."""
    from spiritlm.formats import split_modalities

    stop_set = set(stops) | {tokenizer.eos_id}
    texts = []
    for ids in outs:
        ids = list(ids)
        while ids and ids[-1] in stop_set:
            ids = ids[:-1]
        texts.append(tokenizer.decode(ids))
    if tgt == "text" and proto.text_stops == "eos":
        return [t.strip() for t in texts]  # Meta: newlines inside kept; markers were banned
    if tgt == "text":
        return [" ".join(s.text for s in split_modalities(t) if s.modality == "text").strip() for t in texts]
    return ["".join(s.render() for s in split_modalities(t) if s.modality == "speech") for t in texts]


def _judge_outputs(outputs: Sequence[str], tgt: str, proto: StspProtocol, text_judge: Any, speech_judge: Any, vocoder: Any,
                   speaker: Any) -> tuple[list[str] | None, list[str], int]:
    """``(judged labels, vocoder refusals, speech outputs voiced with the vocoder's default codes)``;
    judged labels None when the vocoder refused every speech output.

    An empty continuation has no sentiment: it is judged ``(empty)``, which is never right, unless
    the protocol hands it to the classifier as Meta's pipeline does (a text classifier answers anyway).
    """
    from spiritlm.generation.outputs import vocode_many  # torch: imported when vocoding, not with the CLI

    nonempty = [i for i, o in enumerate(outputs) if o or (tgt == "text" and proto.judge_empty)]
    errors: list[str] = []
    stats: dict[str, int] = {}
    if tgt == "text":
        pred = dict(zip(nonempty, text_judge.predict([outputs[i] for i in nonempty]) if nonempty else []))
    else:
        got, errors = vocode_many(vocoder, [outputs[i] for i in nonempty], speaker, stats)
        if nonempty and not got:
            return None, errors, stats.get("filled", 0)
        keys = sorted(got)
        labels = judge_speech(speech_judge, [got[k] for k in keys], proto.one_clip_at_a_time) if keys else []
        pred = dict(zip([nonempty[k] for k in keys], labels))
    return [pred.get(i, EMPTY) for i in range(len(outputs))], errors, stats.get("filled", 0)


def _run_metrics(rows: Sequence[dict], items: Sequence[StspItem], cfg: StspConfig, proto: StspProtocol, notes: dict,
                 seed: int) -> dict[str, Any]:
    """:func:`stsp_metrics` of the rows with the run's notes, shots used, label and judged distributions."""
    metrics = stsp_metrics(rows, seed=seed)
    metrics.update(notes)
    if cfg.shots:
        used = [len(r["shot_ids"]) for r in rows]
        metrics["shots_used"] = {"min": min(used), "mean": round(float(np.mean(used)), 3), "max": max(used)}
    metrics["labels"] = dict(sorted(Counter(it.label for it in items).items()))
    metrics["judged_distribution"] = {
        d: dict(sorted(Counter(r["judged"] for r in rows if r["direction"] == d).items())) for d in DIRECTIONS
        if any(r["direction"] == d for r in rows)
    }
    return metrics


def _write_meta_layout(out_dir: str | os.PathLike, rows: Sequence[dict], meta_reference: str | os.PathLike | None, metrics: dict) -> None:
    """Each direction's judged labels in Meta's predictions layout (``pred_<direction>.jsonl``),
    scored against ``meta_reference`` by Meta's rules and ours when given (``metrics["meta_score"]``)."""
    from spiritlm.evals.stsp_score import score_meta, write_meta_predictions

    Path(out_dir).mkdir(parents=True, exist_ok=True)
    for d in DIRECTIONS:
        rs = [r for r in rows if r["direction"] == d]
        if rs:
            write_meta_predictions(Path(out_dir) / f"pred_{d}.jsonl", [(r["id"], r["judged"]) for r in rs])
            if meta_reference is not None:
                sc = score_meta(Path(out_dir) / f"pred_{d}.jsonl", meta_reference, "sentiment")
                metrics.setdefault("meta_score", {})[d] = {k: sc[k] for k in ("meta", "strict", "meta_refuses")}


def _run_direction(d: str, items: Sequence[StspItem], model: Any, cfg: StspConfig, proto: StspProtocol, shot_pool: Any,
                   text_judge: Any, speech_judge: Any, speaker: Any, progress: bool, throughput: Any, notes: dict) -> list[dict]:
    """The prediction rows of one direction (none when it is skipped: the reason goes to ``notes``)."""
    lm = model.lm
    rows: list[dict] = []
    src, tgt = MODALITY[d[0]], MODALITY[d[2]]
    todo = [it for it in items if (it.text if src == "text" else it.speech)]
    shots = _missing_for(d, model, text_judge, speech_judge) or (f"no {src} prompts" if not todo else None) \
        or _direction_shots(d, todo, shot_pool, cfg, proto)
    if isinstance(shots, str):
        notes["skipped_directions"][d] = shots
        return []
    budget = proto.max_new_tokens_text if tgt == "text" else proto.max_new_tokens_speech
    prompts, todo, notes["skipped_too_long"][d] = _direction_prompts(lm, d, todo, shots, proto, budget)
    if not notes["skipped_too_long"][d]:
        del notes["skipped_too_long"][d]
    if not todo:
        notes["skipped_directions"][d] = f"every prompt is longer than the model's context ({lm.config.max_seq_len} tokens)"
        return []
    allowed, stops = _stop_and_allowed(lm, tgt, proto)
    outs = lm.generate_batch_ids(
        prompts, allowed=allowed, max_new_tokens=budget, do_sample=proto.do_sample, temperature=proto.temperature,
        top_p=proto.top_p, top_k=proto.top_k, seed=cfg.seed, min_new_tokens=proto.min_new_tokens, batch_size=cfg.batch_size,
        stop_ids=stops, progress=progress,
    )
    throughput.add(getattr(lm, "last_stats", None))
    outputs = _continuations(lm.tokenizer, outs, stops, tgt, proto)
    judged, errors, filled = _judge_outputs(outputs, tgt, proto, text_judge, speech_judge, model.vocoder, speaker)
    if filled:
        notes["vocoder_filled"][d] = filled
    if judged is None:
        notes["skipped_directions"][d] = f"the vocoder refused every output: {errors[0]}"
        return []
    if errors:
        notes["vocoder_errors"][d] = {"count": len(errors), "first": errors[0]}
    for i, (it, out, j) in enumerate(zip(todo, outputs, judged)):
        rows.append({
            "id": it.id, "direction": d, "label": it.label, "shot_ids": [s.id for s in shots[it.id]],
            "seed": cfg.seed + i if proto.do_sample else None, "output": out, "judged": j,
            "score": float(j == it.label), "n_tokens": len(outs[i]),
        })
    return rows


@dataclass
class StspInputs:
    """The inputs of :func:`run_stsp`: prompts, the few-shot pool and the judges of the continuations.

    Attributes:
        items: the prompts (ours: :func:`items_from_manifest`; Meta's: :func:`read_meta_stsp`).
        shot_pool: few-shot examples (a list, or Meta's per-direction lists of :func:`read_meta_few_shot`).
        text_judge: judges the sentiment of text continuations (None: no ``*2t`` direction).
        speech_judge: judges the sentiment of speech continuations (None: no ``*2s`` direction).
        judges_metrics: the judges' own scores (``judges_metrics.json``), copied into ``metrics.json``.
        extra_config: recorded under ``metrics.json`` ``config`` (the command's file paths).
        meta_reference: the Meta manifest the items came from: each ``pred_<direction>.jsonl`` is scored by Meta's rules.
    """

    items: Sequence[StspItem]
    shot_pool: Sequence[StspItem] | dict[str, Sequence[StspItem]] = ()
    text_judge: Any = None
    speech_judge: Any = None
    judges_metrics: dict | None = None
    extra_config: dict | None = None
    meta_reference: str | os.PathLike | None = None


def run_stsp(model: EvalModel, inputs: StspInputs, config: StspConfig | None = None, out_dir: str | os.PathLike | None = None,
             *, progress: bool = False) -> EvalResult:
    """Runs STSP on ``inputs.items`` with ``model`` (an :class:`spiritlm.evals.common.EvalModel`) and ``config``
    (default :class:`StspConfig`).

    Directions whose inputs or judge are missing (no text/speech prompt, no vocoder or speech
    judge for speech outputs, no text judge for text outputs) are skipped and listed under
    ``skipped_directions`` with the reason. An empty continuation (no text, or no speech token)
    is judged ``"(empty)"`` (wrong), and so is a speech output the vocoder refuses (counted in
    ``vocoder_errors``; a direction whose every output is refused is skipped with the message).
    A speech output without pitch/style tokens is voiced with the vocoder's default codes and
    judged (counted per direction in ``vocoder_filled``).

    With ``out_dir``, each direction's judged labels are also written in Meta's predictions
    layout (``pred_<direction>.jsonl``: ``{"id", "pred"}`` a line), which Meta's ``eval_stsp.py``
    or ``spiritlm eval stsp-score`` read; with ``inputs.meta_reference`` (the Meta manifest the items
    came from) each is scored by Meta's rules and our strict count (``meta_score``). ``progress``:
    tqdm bars of the decoding.

    Returns:
        :class:`spiritlm.evals.common.EvalResult` (task ``stsp``); written to ``out_dir`` when given.
    """
    from spiritlm.evals.common import EvalResult, write_eval_outputs
    from spiritlm.evals.engine import Throughput

    cfg = config or StspConfig()
    items, shot_pool, text_judge, speech_judge = inputs.items, inputs.shot_pool, inputs.text_judge, inputs.speech_judge
    proto = cfg.settings()
    bad = [d for d in cfg.directions if d not in DIRECTIONS]
    if bad:
        raise UserError(f"unknown STSP directions {bad} (choose from {', '.join(DIRECTIONS)}) (--directions)")
    items = _take_balanced(list(items), cfg.max_items)
    if not items:
        raise UserError("no STSP prompt with a sentiment label (--manifest)")
    from spiritlm.evals.common import resolve_speaker

    speaker, speaker_note = resolve_speaker(model.vocoder, proto.speaker)
    if speaker_note and any(d.endswith("s") for d in cfg.directions):
        logger.info(f"[eval stsp] note: {speaker_note}")
    notes: dict[str, dict] = {"skipped_directions": {}, "vocoder_errors": {}, "vocoder_filled": {}, "skipped_too_long": {}}
    skipped = notes["skipped_directions"]
    rows: list[dict] = []
    throughput = Throughput()
    t_start = time.time()
    for d in cfg.directions:
        rows += _run_direction(d, items, model, cfg, proto, shot_pool, text_judge, speech_judge, speaker, progress, throughput, notes)
    if not rows:
        raise UserError(f"STSP ran no direction: {'; '.join(f'{k}: {v}' for k, v in skipped.items())}")
    metrics = _run_metrics(rows, items, cfg, proto, notes, seed=cfg.seed)
    metrics["judge_ceilings"] = judge_ceilings(items, text_judge, speech_judge, model.vocoder, speaker, proto.one_clip_at_a_time)
    if inputs.judges_metrics:
        metrics["judges"] = {k: v for k, v in inputs.judges_metrics.items() if k in ("asr", "text-sentiment", "speech-sentiment")}
    metrics["config"] = {"model": getattr(model, "name", ""), **asdict(cfg), "directions": list(cfg.directions),
                         "settings": asdict(proto), "protocol_overrides": cfg.overrides(), "speaker_used": speaker,
                         "speaker_note": speaker_note, **(inputs.extra_config or {})}
    if out_dir is not None:
        _write_meta_layout(out_dir, rows, inputs.meta_reference, metrics)
    thr = throughput.as_dict()
    thr["wall_seconds"] = round(time.time() - t_start, 2)
    result = EvalResult("stsp", metrics, rows, thr)
    if out_dir is not None:
        write_eval_outputs(out_dir, result)
    return result


def judge_speech(judge: Any, wavs: Sequence[np.ndarray], one_clip_at_a_time: bool) -> list[str]:
    """Sentiments of ``wavs`` by a speech judge; a Hugging Face classifier scores each clip alone
    when ``one_clip_at_a_time`` (Meta's way: no zero padding, which changes what a wav2vec2-style
    model without attention mask hears). Our prosodic judge pools each clip alone anyway."""
    from spiritlm.judges.models import HfSentimentJudge

    if one_clip_at_a_time and isinstance(judge, HfSentimentJudge):
        return judge.predict(wavs, batch_size=1)
    return judge.predict(wavs)


def judge_ceilings(items: Sequence[StspItem], text_judge: Any = None, speech_judge: Any = None, vocoder: Any = None,
                   speaker: int | str = 0, one_clip_at_a_time: bool = False) -> dict:
    """The judges' own accuracy on the prompts (what a perfectly preserving continuation could score).

    ``text``: text judge on the written prompts; ``speech_audio``: speech judge on the prompts'
    audio; ``speech_vocoded``: speech judge on the vocoder's rendering of the prompts' units
    (the ceiling of the speech-output directions).
    """
    from spiritlm.audio import AudioError, load_audio
    from spiritlm.generation.outputs import vocode_many

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
            pred = judge_speech(speech_judge, wavs, one_clip_at_a_time)
            out["speech_audio"] = {"accuracy": float(np.mean([p == it.label for p, it in zip(pred, its)])), "n": len(its)}
        if vocoder is not None:
            its = [it for it in items if it.speech]
            got, errors = vocode_many(vocoder, [it.speech for it in its], speaker) if its else ({}, [])
            if got:
                keys = sorted(got)
                pred = judge_speech(speech_judge, [got[k] for k in keys], one_clip_at_a_time)
                out["speech_vocoded"] = {"accuracy": float(np.mean([p == its[k].label for p, k in zip(pred, keys)])), "n": len(keys),
                                         "vocoder_errors": len(errors)}
    return out


# ---------------------------------------------------------------------------------------------
# Command
# ---------------------------------------------------------------------------------------------


def resolve_judge_dirs(judges: str | None, **overrides: str | None) -> dict[str, str | None]:
    """Judge folders: ``judges/{asr,text_sentiment,speech_sentiment}`` unless a flag names another (any HF folder)."""
    from spiritlm.judges import JUDGE_DIRS

    out: dict[str, str | None] = {}
    for kind, sub in JUDGE_DIRS.items():
        flag = overrides.get(sub.replace("_sentiment", "") + "_judge")
        path = flag or (str(Path(judges) / sub) if judges else None)
        out[kind] = path if path and Path(path).is_dir() else None
        if flag and not Path(flag).is_dir():
            raise UserError(f"{flag}: no such judge directory (--{sub.replace('_sentiment', '')}_judge)")
    return out


@flags_from(StspConfig, "protocol", "shots", "seed", "do_sample", "temperature", "top_p", "top_k", "max_new_tokens_text",
            "max_new_tokens_speech", "max_items", "batch_size")
def stsp_command(
    model: str,
    manifest: str,
    out: str,
    judges: str | None = None,
    units: str | None = None,
    vocoder: str | None = None,
    speech_tokenizer: str | None = None,
    text_judge: str | None = None,
    text_judge_tokenizer: str | None = None,
    speech_judge: str | None = None,
    split: str = "test",
    shot_split: str = "train",
    directions: list[str] = list(DIRECTIONS),
    audio_root: str | None = None,
    shots_dir: str | None = None,
    speaker: str | None = None,
    device: str = "cpu",
    threads: NonNegativeInt = 0,
    progress: bool = True,
    overwrite: bool = False,
    **settings: Any,
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
        text_judge_tokenizer: folder of the Hugging Face text classifier's tokenizer when --text_judge has none
            (Meta's RoBERTa-large classifier uses j-hartmann/sentiment-roberta-large-english-3-classes's).
        speech_judge: a speech sentiment judge folder (ours or a Hugging Face audio classifier, e.g. Meta's
            Expresso emotion classifier) instead of --judges'.
        split: the prompts' split in a corpus manifest (ignored for Meta's files, which are one split each).
        shot_split: split the few-shot examples come from.
        directions: any of t2t, t2s, s2t, s2s.
        audio_root: folder Meta's ``wav_path`` values are relative to (default: the manifest's folder and its parents).
        shots_dir: Meta's few-shot folder (``{t2t,t2s,s2t,s2s}.jsonl``) for few-shot runs on Meta's manifests.
        speaker: vocoder speaker of speech outputs, row number or name (default: meta 2, falling back to 0 with a
            note on a vocoder with fewer speakers; ours 0).
        device: cpu or cuda.
        threads: CPU threads of torch, BLAS and OpenMP (0: leave them as they are).
        progress: show progress bars.
        overwrite: replace a finished evaluation in OUT (one holding metrics.json).
    """
    # files and flags first: a typo costs a second, not the imports of torch and the model
    meta_layout, manifest_items, dirs, units_map = _check_stsp_flags(
        model, manifest, out, judges, units, vocoder, speech_tokenizer, text_judge, text_judge_tokenizer, speech_judge,
        split, directions, audio_root, overwrite, settings["protocol"])

    from spiritlm.evals.common import load_eval_model
    from spiritlm.judges import load_judges_metrics
    from spiritlm.judges.models import load_speech_sentiment_judge, load_text_sentiment_judge
    from spiritlm.numerics import threads as pinned_threads

    with pinned_threads(threads):
        em = load_eval_model(model, vocoder=vocoder, speech_tokenizer=speech_tokenizer, device=device)
        try:
            tj = load_text_sentiment_judge(dirs["text-sentiment"], device, tokenizer=text_judge_tokenizer) if dirs["text-sentiment"] else None
        except ValueError as e:
            raise UserError(f"{e}") from None
        sj = load_speech_sentiment_judge(dirs["speech-sentiment"], device) if dirs["speech-sentiment"] else None
        items, problems, pool = _stsp_items(em, manifest, manifest_items, units_map, units, meta_layout, audio_root,
                                            shots_dir, shot_split, settings["shots"], settings["protocol"])
        speaker_arg: int | str | None = int(speaker) if speaker is not None and str(speaker).isdigit() else speaker
        cfg = StspConfig(directions=tuple(directions), speaker=speaker_arg, **settings)
        extra = {"manifest": str(manifest), "units": units, "vocoder": vocoder, "judges": {k: v for k, v in dirs.items() if k != "asr"},
                 "skipped_items": problems}
        inputs = StspInputs(items, shot_pool=pool, text_judge=tj, speech_judge=sj,
                            judges_metrics=load_judges_metrics(judges) if judges else None, extra_config=extra,
                            meta_reference=manifest if meta_layout else None)
        run_stsp(em, inputs, cfg, out, progress=progress)


def _check_stsp_flags(model, manifest, out, judges, units, vocoder, speech_tokenizer, text_judge, text_judge_tokenizer,
                      speech_judge, split, directions, audio_root, overwrite, protocol):
    """``stsp_command``'s files and flags, checked before torch and the model load (one-line UserErrors
    naming the flag or ``path:line``); returns ``(meta_layout, manifest_items, judge dirs, units_map)``."""
    from spiritlm.evals.common import check_eval_output, check_model_paths, check_units_match, load_manifest_items
    from spiritlm.units_jsonl import load_units

    check_eval_output(out, overwrite)
    if not Path(manifest).is_file():
        raise UserError(f"{manifest}: no such manifest (--manifest)")
    meta_layout = is_meta_stsp_manifest(manifest)
    get_protocol(protocol)
    # a bad line is named (path:line) before the model loads
    manifest_items = None if meta_layout else load_manifest_items(manifest, split)
    bad = [d for d in directions if d not in DIRECTIONS]
    if bad:
        raise UserError(f"unknown STSP directions {bad} (choose from {', '.join(DIRECTIONS)}) (--directions)")
    dirs = resolve_judge_dirs(judges, text_judge=text_judge, speech_judge=speech_judge)
    if judges and not Path(judges).is_dir():
        raise UserError(f"{judges}: no such judges directory (train one with `spiritlm eval judges`) (--judges)")
    check_model_paths(model, vocoder=vocoder, speech_tokenizer=speech_tokenizer)
    if text_judge_tokenizer is not None and not Path(text_judge_tokenizer).exists():
        raise UserError(f"{text_judge_tokenizer}: no such tokenizer folder (--text_judge_tokenizer)")
    units_map = load_units(units) if units else None
    if meta_layout:
        # as Meta's sanity_check_download.py, before any model loads: every WAV the manifest names
        from spiritlm.evals.stsp_score import check_manifest_audio

        check_manifest_audio(manifest, meta_audio_paths(manifest, audio_root))
    if units_map is not None and manifest_items is not None:
        check_units_match(load_manifest_items(manifest), units_map, manifest, units)
    return meta_layout, manifest_items, dirs, units_map


def _stsp_items(em, manifest, manifest_items, units_map, units, meta_layout, audio_root, shots_dir, shot_split, shots, protocol):
    """``(items, problems, few-shot pool)`` of ``stsp_command``: from Meta's files or a corpus manifest."""
    from spiritlm.evals.common import load_manifest_items

    problems: list[dict] = []
    pool: list[StspItem] | dict[str, list[StspItem]] = []
    if meta_layout:
        items, problems = read_meta_stsp(manifest, audio_root=audio_root, units=units_map, speech_tokenizer=em.speech_tokenizer,
                                         expressive=em.expressive, meta_labels=protocol == "meta")
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
    return items, problems, pool
