"""Documents the LM trains on: speech-only, text-only and word-level interleaved.

From one manifest utterance (text + word alignment in seconds) and its units (Meta's unit dict,
not deduplicated: HuBERT at 25 Hz, pitch at 12.5 Hz, style at 1 Hz) three documents are made:

* **speech** — ``[Speech]`` + :func:`spiritlm.formats.units_to_string` of the whole utterance
  (Meta's string, HuBERT and pitch deduplicated, expressive streams merged by time);
* **text** — ``[Text]`` + the utterance's text;
* **interleaved** — the word sequence cut into spans of alternating modality, a marker before
  every span: text spans of ``text_span_min..text_span_max`` words (default 10–30), speech spans
  of ``speech_span_min..speech_span_max`` words (default 5–15), the first modality drawn at
  random. The last span ends with the utterance and may be shorter than its minimum.

Time range of a speech span (the choice made here): from the start of its first word to the start
of the word that follows the span, or to the end of its last word when the span ends the
utterance. A pause after a word thus goes with the speech before it, consecutive speech frames are
never lost between spans, and leading silence before the first word is dropped. A token belongs
to the span when the start time of its frame, ``index / rate`` with the true rates (25, 12.5 and
1 Hz), lies in ``[start, end)``. The tokens of a span are deduplicated after slicing (HuBERT and
pitch; style is not), so a span never begins with a token that only repeats the previous span's
last token by accident of the cut, and merged in time order (style, then pitch, then HuBERT at
equal times) using Meta's ordering rate of 24.99 Hz for HuBERT, as ``units_to_string`` does: a
speech span that covers the whole utterance from time 0 gives exactly ``units_to_string``'s
string.

Corpora of short sentences can group consecutive utterances of a speaker into one interleaved
document (``InterleaveConfig.group_words``); a speech span that crosses utterances holds, for each
utterance, the tokens of its part of the span, with the time ranges above taken in that
utterance.

Random choices use ``random.Random(f"{seed}:{utterance id}")`` (the group's first utterance): a
document depends on the seed and its utterances only, never on the order or the process that
builds it.

Utterances that cannot be aligned are skipped and counted with a reason (:data:`SKIP_REASONS`).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from jsonargparse.typing import NonNegativeFloat, PositiveInt

from spiritlm.formats import SPEECH_MARKER, TEXT_MARKER, deduplicate, speech_token, units_to_string
from spiritlm.units_jsonl import find_units

from spiritlm.constants import STREAM_RATES, SUBSETS  # noqa: F401  (SUBSETS re-exported)

#: why an utterance gave no document of a subset
SKIP_REASONS = {
    "missing_units": "no units for the utterance in the units file",
    "missing_stream": "expressive build but the units lack pitch or style",
    "unit_count_mismatch": "a stream's frame count disagrees with the duration beyond the tolerance",
    "empty_text": "the utterance has no text",
    "no_words": "the utterance has no word alignment",
    "bad_word_times": "a word ends before it starts, or words go back in time",
    "word_outside_audio": "a word lies (partly) outside [0, duration]",
    "too_short_to_interleave": "the span draw gave a single span (no modality switch)",
    "empty_speech_span": "a speech span holds no HuBERT frame",
}


class WordLike(Protocol):
    word: str
    start: float
    end: float


class UtteranceLike(Protocol):
    """What interleaving reads from a manifest utterance (``spiritlm.corpus.manifest.Utterance``)."""

    id: str
    duration: float
    text: str
    words: list


@dataclass
class InterleaveConfig:
    """How documents are made from utterances.

    Args:
        text_span_min: fewest words in a text span (except the utterance's last span).
        text_span_max: most words in a text span.
        speech_span_min: fewest words in a speech span (except the utterance's last span).
        speech_span_max: most words in a speech span.
        expressive: include pitch and style tokens (Spirit LM Expressive); needs those streams.
        hubert_rate: HuBERT frame rate in Hz, used to place frames in time when slicing.
        pitch_rate: pitch frame rate in Hz.
        style_rate: style frame rate in Hz.
        hubert_order_rate: HuBERT rate used only to order tokens across streams (Meta: 24.99).
        duration_tolerance: largest allowed gap in seconds between a stream's length
            (frames / rate) and the utterance duration (at least one frame of that stream), and
            how far a word may stick out of ``[0, duration]``.
        group_words: 0 interleaves each utterance alone (Meta's setting, for corpora of long
            utterances); N > 0 first groups consecutive utterances of the same speaker and split
            (manifest order) until a group has at least N words, and interleaves each group as
            one document, so that corpora of short sentences (the synthetic corpus) still give
            documents with several spans. Speech-only and text-only documents stay one per
            utterance.
    """

    # typed as `spiritlm data build`'s flags (spiritlm.cli.flags_from): the parser refuses a bad value
    text_span_min: PositiveInt = 10
    text_span_max: PositiveInt = 30
    speech_span_min: PositiveInt = 5
    speech_span_max: PositiveInt = 15
    expressive: bool = False
    hubert_rate: float = STREAM_RATES["hubert"]
    pitch_rate: float = STREAM_RATES["pitch"]
    style_rate: float = STREAM_RATES["style"]
    hubert_order_rate: float = 24.99
    duration_tolerance: NonNegativeFloat = 0.1
    group_words: int = 0

    def __post_init__(self) -> None:
        for kind in ("text", "speech"):
            lo, hi = getattr(self, f"{kind}_span_min"), getattr(self, f"{kind}_span_max")
            if not 1 <= lo <= hi:
                raise ValueError(f"InterleaveConfig: need 1 <= {kind}_span_min <= {kind}_span_max, got {lo}, {hi}")

    def span_bounds(self, modality: str) -> tuple[int, int]:
        """``(min, max)`` words of a span of ``modality``."""
        return (
            (self.text_span_min, self.text_span_max)
            if modality == "text"
            else (self.speech_span_min, self.speech_span_max)
        )


@dataclass
class Span:
    """One modality run of a document.

    ``first_word``/``end_word`` index the document's words (``end_word`` exclusive; the words of
    its utterances in order); ``start`` and ``end`` are the span's time range in seconds (speech
    spans; text spans carry their words' range for reference); ``content`` is the rendered text
    or token string. ``ranges`` lists ``(utterance id, start, end)`` per utterance the span
    touches: one entry unless utterances are grouped (then ``start`` is the first range's start
    and ``end`` the last range's end, in different utterances' times).
    """

    modality: Literal["text", "speech"]
    first_word: int
    end_word: int
    start: float
    end: float
    content: str
    ranges: list[tuple[str, float, float]] = field(default_factory=list)

    @property
    def num_words(self) -> int:
        return self.end_word - self.first_word


@dataclass
class Document:
    """An LM document: ``text`` is the full string, markers included (no BOS/EOS)."""

    id: str
    subset: str
    text: str
    spans: list[Span] = field(default_factory=list)


class SkipDocument(Exception):
    """An utterance cannot give a document; ``reason`` is a key of :data:`SKIP_REASONS`."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


# ---------------------------------------------------------------------------------------------
# Units files
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------


def _streams(units: Mapping[str, Any], cfg: InterleaveConfig) -> dict[str, list[str]]:
    """Split streams used by the config: ``{"hubert": [...], ("pitch", "style")}``."""
    names = ("hubert", "pitch", "style") if cfg.expressive else ("hubert",)
    out = {}
    for name in names:
        value = units.get(name)
        if value is None or (name != "hubert" and not str(value).strip()):
            raise SkipDocument("missing_stream", f"no {name!r} stream")
        out[name] = value.split() if isinstance(value, str) else [str(v) for v in value]
    return out


def _rates(cfg: InterleaveConfig) -> dict[str, float]:
    return {"hubert": cfg.hubert_rate, "pitch": cfg.pitch_rate, "style": cfg.style_rate}


def check_units(utt: UtteranceLike, units: Mapping[str, Any] | None, cfg: InterleaveConfig) -> dict[str, list[str]]:
    """The utterance's streams, split into tokens, after checking them against its duration.

    Raises:
        SkipDocument: ``missing_units``, ``missing_stream`` or ``unit_count_mismatch``.
    """
    if units is None:
        raise SkipDocument("missing_units", f"utterance {utt.id}")
    streams = _streams(units, cfg)
    if not streams["hubert"]:
        raise SkipDocument("unit_count_mismatch", "empty hubert stream")
    rates = _rates(cfg)
    for name, toks in streams.items():
        rate = rates[name]
        tol = max(cfg.duration_tolerance, 1.0 / rate)
        if abs(len(toks) / rate - float(utt.duration)) > tol + 1e-9:
            raise SkipDocument(
                "unit_count_mismatch",
                f"{name}: {len(toks)} frames at {rate} Hz = {len(toks) / rate:.3f} s vs duration {utt.duration:.3f} s",
            )
    return streams


def check_words(utt: UtteranceLike, cfg: InterleaveConfig) -> None:
    """Checks the word alignment of ``utt``.

    Raises:
        SkipDocument: ``no_words``, ``bad_word_times`` or ``word_outside_audio``.
    """
    words = utt.words
    if not words:
        raise SkipDocument("no_words", f"utterance {utt.id}")
    tol = cfg.duration_tolerance
    prev_start = -math.inf
    for i, w in enumerate(words):
        if not (w.end >= w.start) or w.start < prev_start:
            raise SkipDocument("bad_word_times", f"word {i} {w.word!r} [{w.start}, {w.end}]")
        if w.start < -tol or w.end > float(utt.duration) + tol:
            raise SkipDocument("word_outside_audio", f"word {i} {w.word!r} [{w.start}, {w.end}] vs duration {utt.duration}")
        prev_start = w.start


# ---------------------------------------------------------------------------------------------
# Documents
# ---------------------------------------------------------------------------------------------


def speech_document(utt: UtteranceLike, units: Mapping[str, Any] | None, cfg: InterleaveConfig) -> Document:
    """``[Speech]`` + Meta's token string of the whole utterance."""
    streams = check_units(utt, units, cfg)
    joined = {k: " ".join(v) for k, v in streams.items()}
    s = units_to_string(joined, has_pitch=cfg.expressive, has_style=cfg.expressive, hubert_rate=cfg.hubert_order_rate)
    n = len(utt.words or [])
    span = Span("speech", 0, n, 0.0, float(utt.duration), s)
    return Document(utt.id, "speech", SPEECH_MARKER + s, [span])


def text_document(utt: UtteranceLike) -> Document:
    """``[Text]`` + the utterance's text."""
    text = (utt.text or "").strip()
    if not text:
        raise SkipDocument("empty_text", f"utterance {utt.id}")
    n = len(utt.words or [])
    span = Span("text", 0, n, 0.0, float(utt.duration), text)
    return Document(utt.id, "text", TEXT_MARKER + text, [span])


def frame_range(start: float, end: float, rate: float) -> tuple[int, int]:
    """Frames ``i`` whose start time ``i / rate`` lies in ``[start, end)``, as ``range`` bounds."""
    eps = 1e-9
    return max(0, math.ceil(start * rate - eps)), max(0, math.ceil(end * rate - eps))


def slice_speech(streams: Mapping[str, list[str]], start: float, end: float, cfg: InterleaveConfig) -> str:
    """Token string of the frames in ``[start, end)`` seconds, deduplicated after slicing.

    Streams present in ``streams`` are merged by time (style, pitch, HuBERT at equal times),
    frames ordered by ``index / rate`` with HuBERT at ``cfg.hubert_order_rate``.
    """
    order = [("style", cfg.style_rate, False), ("pitch", cfg.pitch_rate, True), ("hubert", cfg.hubert_rate, True)]
    order_rate = {"style": cfg.style_rate, "pitch": cfg.pitch_rate, "hubert": cfg.hubert_order_rate}
    keyed: list[tuple[float, int, str]] = []
    for rank, (name, rate, dedup) in enumerate(order):
        if name not in streams:
            continue
        i0, i1 = frame_range(start, end, rate)
        toks = streams[name][i0:i1]
        if dedup:
            values, durations = deduplicate(toks)
        else:
            values, durations = list(toks), [1] * len(toks)
        index = i0
        for value, dur in zip(values, durations):
            keyed.append((index / order_rate[name], rank, speech_token(name, int(value))))
            index += dur
    keyed.sort(key=lambda k: (k[0], k[1]))
    return "".join(tok for _, _, tok in keyed)


def draw_spans(num_words: int, cfg: InterleaveConfig, rng: random.Random) -> list[tuple[str, int, int]]:
    """Cuts ``num_words`` words into alternating ``(modality, first_word, end_word)`` spans.

    The first modality is drawn at random; each span's length is uniform in its bounds; the last
    span is cut by the end of the utterance.
    """
    modality = rng.choice(("text", "speech"))
    spans = []
    i = 0
    while i < num_words:
        lo, hi = cfg.span_bounds(modality)
        j = min(num_words, i + rng.randint(lo, hi))
        spans.append((modality, i, j))
        i = j
        modality = "speech" if modality == "text" else "text"
    return spans


def _speech_range(words: list, a: int, b: int) -> tuple[float, float]:
    """Time range of words ``a..b-1`` of one utterance: first start to the next word's start,
    or to the last word's end at the end of the utterance."""
    return float(words[a].start), float(words[b].start) if b < len(words) else float(words[b - 1].end)


def interleaved_group_document(
    members: Sequence[tuple[UtteranceLike, dict[str, list[str]]]], cfg: InterleaveConfig, rng: random.Random
) -> Document:
    """One interleaved document over the words of one or more utterances.

    Args:
        members: ``(utterance, streams)`` pairs, streams as returned by :func:`check_units`
            (the utterances' words already checked with :func:`check_words`).
        cfg: the config.
        rng: draws the first modality and the span lengths.

    Raises:
        SkipDocument: ``too_short_to_interleave`` or ``empty_speech_span``.
    """
    # (member, word index) of every word of the document
    where = [(m, i) for m, (utt, _) in enumerate(members) for i in range(len(utt.words))]
    drawn = draw_spans(len(where), cfg, rng)
    if len(drawn) < 2:
        raise SkipDocument("too_short_to_interleave", f"{len(where)} words")
    spans = []
    for modality, a, b in drawn:
        words = [members[m][0].words[i] for m, i in where[a:b]]
        # pieces of the span inside each utterance: member -> (first word, end word)
        pieces: dict[int, list[int]] = {}
        for m, i in where[a:b]:
            pieces.setdefault(m, [i, i + 1])[1] = i + 1
        ranges = [
            (members[m][0].id, *_speech_range(members[m][0].words, lo, hi)) for m, (lo, hi) in pieces.items()
        ]
        if modality == "text":
            content = " ".join(w.word for w in words)
        else:
            content = "".join(
                slice_speech(members[m][1], start, end, cfg) for m, (_, start, end) in zip(pieces, ranges)
            )
            if "[Hu" not in content:
                raise SkipDocument("empty_speech_span", f"words {a}..{b - 1} {ranges}")
        spans.append(Span(modality, a, b, ranges[0][1], ranges[-1][2], content, ranges))
    text = "".join((TEXT_MARKER if s.modality == "text" else SPEECH_MARKER) + s.content for s in spans)
    return Document("+".join(u.id for u, _ in members), "interleaved", text, spans)


def interleaved_document(
    utt: UtteranceLike, units: Mapping[str, Any] | None, cfg: InterleaveConfig, rng: random.Random
) -> Document:
    """A word-level interleaved document of one utterance (see the module docstring)."""
    check_words(utt, cfg)
    return interleaved_group_document([(utt, check_units(utt, units, cfg))], cfg, rng)


def utterance_rng(seed: int, utt_id: str) -> random.Random:
    """The random generator of one utterance: depends on ``seed`` and the id only."""
    return random.Random(f"{seed}:{utt_id}")


def group_utterances(utterances: Sequence[UtteranceLike], group_words: int) -> list[list[int]]:
    """Indices of the utterances interleaved together (see ``InterleaveConfig.group_words``).

    Groups hold consecutive utterances (in ``utterances`` order) of one speaker and split and
    close when they reach ``group_words`` words; they are ordered by their first utterance.
    With ``group_words <= 0`` every utterance is its own group.
    """
    if group_words <= 0:
        return [[i] for i in range(len(utterances))]
    groups: list[list[int]] = []
    open_groups: dict[tuple, tuple[list[int], list[int]]] = {}  # key -> (group, [word count])
    for i, utt in enumerate(utterances):
        key = (getattr(utt, "speaker", None), getattr(utt, "split", None))
        if key not in open_groups:
            open_groups[key] = ([], [0])
            groups.append(open_groups[key][0])
        group, count = open_groups[key]
        group.append(i)
        count[0] += len(utt.words or [])
        if count[0] >= group_words:
            del open_groups[key]
    return groups


def make_group_documents(
    members: Sequence[tuple[UtteranceLike, Mapping[str, Any] | None]],
    cfg: InterleaveConfig,
    seed: int = 0,
    subsets: Iterable[str] = SUBSETS,
) -> tuple[list[Document], list[tuple[str, str]]]:
    """Documents of a group of utterances (:func:`group_utterances`): the speech-only and
    text-only documents of each utterance and one interleaved document of the group.

    An utterance that cannot be aligned is left out of the interleaved document (its reason is
    counted); the random draws use :func:`utterance_rng` of the group's first utterance.

    Returns:
        ``(documents, skipped)``: the documents made, subset by subset in ``subsets`` order,
        and a ``(subset, reason)`` pair for each document not made.
    """
    docs: list[Document] = []
    skipped: list[tuple[str, str]] = []
    for subset in subsets:
        if subset not in SUBSETS:
            raise ValueError(f"unknown subset {subset!r} (choose from {SUBSETS})")
        if subset == "interleaved":
            ok = []
            for utt, units in members:
                try:
                    check_words(utt, cfg)
                    ok.append((utt, check_units(utt, units, cfg)))
                except SkipDocument as e:
                    skipped.append((subset, e.reason))
            if not ok:
                continue
            try:
                docs.append(interleaved_group_document(ok, cfg, utterance_rng(seed, members[0][0].id)))
            except SkipDocument as e:
                skipped.append((subset, e.reason))
            continue
        for utt, units in members:
            try:
                docs.append(speech_document(utt, units, cfg) if subset == "speech" else text_document(utt))
            except SkipDocument as e:
                skipped.append((subset, e.reason))
    return docs, skipped


def make_documents(
    utt: UtteranceLike,
    units: Mapping[str, Any] | None,
    cfg: InterleaveConfig,
    seed: int = 0,
    subsets: Iterable[str] = SUBSETS,
) -> tuple[list[Document], list[tuple[str, str]]]:
    """All documents of one utterance alone (:func:`make_group_documents` of a group of one)."""
    return make_group_documents([(utt, units)], cfg, seed, subsets)


def iter_documents(
    utterances: Sequence[UtteranceLike],
    units: Mapping[str, dict],
    cfg: InterleaveConfig,
    seed: int = 0,
    subsets: Iterable[str] = SUBSETS,
) -> Iterator[tuple[list[UtteranceLike], list[Document], list[tuple[str, str]]]]:
    """:func:`make_group_documents` over a manifest's groups (:func:`group_utterances`),
    matching units with :func:`find_units`; yields ``(group's utterances, documents, skipped)``."""
    subsets = tuple(subsets)
    for group in group_utterances(utterances, cfg.group_words):
        members = [(utterances[i], find_units(units, utterances[i])) for i in group]
        docs, skipped = make_group_documents(members, cfg, seed, subsets)
        yield [u for u, _ in members], docs, skipped
