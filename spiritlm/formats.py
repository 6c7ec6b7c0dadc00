"""Token formats of Spirit LM: unit dicts, speech-token strings, modality segments.

Two representations of the speech side are used throughout the project:

* the **unit dict** (Meta's format), one space-separated string per stream at its own frame rate,
  not deduplicated::

      {"audio": "a.wav", "hubert": "78 42 42 81", "pitch": "13 13", "style": "81"}

  HuBERT units run at 25 Hz (the LM assumes 24.99 Hz, as Meta's release does), pitch tokens at
  12.5 Hz and style tokens at 1 Hz;

* the **token string** the LM reads: each stream optionally deduplicated, mapped to ``[HuN]``,
  ``[PiN]``, ``[StN]`` and merged by timestamp, with style before pitch before HuBERT at equal
  times::

      "[St81][Hu78][Pi13][Hu42][Hu81]"

  Text and speech spans are introduced by the modality markers ``[Text]`` and ``[Speech]``.

``units_to_string`` and ``string_to_units`` have the signatures, keys and output of Meta's
functions of the same names (byte for byte on well-formed input; see ``string_to_units`` for the
one place where malformed input is handled differently). Everything here is pure Python.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from spiritlm.constants import STREAM_RATES
from spiritlm.errors import UserError

TEXT_MARKER = "[Text]"
SPEECH_MARKER = "[Speech]"

#: token-string prefix of each stream
STREAM_PREFIX = {"hubert": "Hu", "pitch": "Pi", "style": "St"}
PREFIX_STREAM = {v: k for k, v in STREAM_PREFIX.items()}

#: Meta's frame rates (Hz) and deduplication defaults, in merge order (style < pitch < hubert).
DEFAULT_RATES = {"style": STREAM_RATES["style"], "pitch": STREAM_RATES["pitch"], "hubert": 24.99}
DEFAULT_DEDUP = {"style": False, "pitch": True, "hubert": True}

#: Style tokens Meta's decoder falls back to when a string has pitch but no style token.
MOST_COMMON_STYLES = (71, 68, 98)

SPEECH_TOKEN_RE = re.compile(r"\[(Hu|Pi|St)(\d+)\]")
_SEGMENT_RE = re.compile(r"\[(?:Hu|Pi|St)\d+\]|\[Text\]|\[Speech\]")
_UNIT_ID_RE = re.compile(r"[0-9]+")
_UNIT_STREAM_RE = re.compile(r"\s*(?:[0-9]+(?:\s+[0-9]+)*)?\s*")


class UnitFormatError(UserError, ValueError):
    """A unit dict, units file or speech token string that is not well formed; the message says where."""


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


def parse_unit_stream(value: str | Sequence, stream: str = "hubert") -> list[int]:
    """The unit ids of one stream of a unit dict (``"12 7 7"`` or a list of ints / digit strings).

    Raises:
        UnitFormatError: ``"<stream>: 'abc' is not a unit id (token 2)"`` for anything that is not
            a non-negative decimal integer (``abc``, ``-5``, ``1.5``, ``True``).
    """
    if isinstance(value, str) and _UNIT_STREAM_RE.fullmatch(value):  # fast path: one C-level scan
        return [int(t) for t in value.split()]
    tokens = value.split() if isinstance(value, str) else list(value)
    out = []
    for i, tok in enumerate(tokens):
        if isinstance(tok, bool) or not (
            (isinstance(tok, int) and tok >= 0) or (isinstance(tok, str) and _UNIT_ID_RE.fullmatch(tok))
        ):
            raise UnitFormatError(f"{stream}: {str(tok)!r} is not a unit id (token {i + 1}; expected an integer >= 0)")
        out.append(int(tok))
    return out


def check_unit_stream(value: str | Sequence, stream: str = "hubert") -> None:
    """:func:`parse_unit_stream` without building the list (a regex scan for well-formed strings)."""
    if not (isinstance(value, str) and _UNIT_STREAM_RE.fullmatch(value)):
        parse_unit_stream(value, stream)


def check_unit_dict(units: dict, streams: Iterable[str] = ("hubert", "pitch", "style")) -> None:
    """Checks the streams of a unit dict that are present (``hubert`` is required).

    Raises:
        UnitFormatError: naming the stream and the bad value (see :func:`parse_unit_stream`).
    """
    if not isinstance(units, dict):
        raise UnitFormatError(f"a unit dict must be a JSON object, got {type(units).__name__}")
    if "hubert" not in units:
        raise UnitFormatError("a unit dict needs a 'hubert' stream")
    for name in streams:
        if name in units and units[name] is not None:
            if not isinstance(units[name], (str, list)):
                raise UnitFormatError(f"{name}: expected a string of unit ids, got {type(units[name]).__name__}")
            check_unit_stream(units[name], name)


def parse_speech_string(s: str) -> list[str]:
    """The tokens of a speech token string such as ``"[St3][Pi1][Hu5][Hu7]"`` (spaces allowed).

    Raises:
        UnitFormatError: for anything else, naming the first bad piece (``[Hu7`` of ``"[Hu12][Hu7"``).
    """
    tokens, pos = [], 0
    for match in re.finditer(r"\s*(\[(?:Hu|Pi|St)\d+\])", s):
        if match.start() != pos:
            break
        tokens.append(match.group(1))
        pos = match.end()
    rest = s[pos:].strip()
    if not rest and not tokens:
        raise UnitFormatError("empty speech token string (expected [HuN], [PiN] or [StN] tokens, e.g. [Hu12][Hu7])")
    if rest:
        end = rest.find("]")
        piece = rest[: end + 1] if 0 <= end < 20 else rest[:20]
        raise UnitFormatError(
            f"{piece!r} is not a speech token (expected [HuN], [PiN] or [StN], e.g. [Hu12][Hu7]; at character {pos})"
        )
    return tokens


# ---------------------------------------------------------------------------------------------
# Deduplication
# ---------------------------------------------------------------------------------------------


def deduplicate(tokens: Sequence) -> tuple[list, list[int]]:
    """Collapses runs of equal consecutive tokens.

    Returns ``(values, durations)``: the first token of each run and the run lengths in frames,
    so that ``expand(values, durations) == list(tokens)``.
    """
    values: list = []
    durations: list[int] = []
    for tok in tokens:
        if values and tok == values[-1]:
            durations[-1] += 1
        else:
            values.append(tok)
            durations.append(1)
    return values, durations


def expand(values: Sequence, durations: Sequence[int]) -> list:
    """Inverse of :func:`deduplicate`: repeats each value by its duration (frames)."""
    if len(values) != len(durations):
        raise ValueError(f"expand: {len(values)} values but {len(durations)} durations")
    out: list = []
    for value, dur in zip(values, durations):
        if dur < 0:
            raise ValueError(f"expand: negative duration {dur}")
        out.extend([value] * int(dur))
    return out


def timed_tokens(tokens: Sequence[str], rate: float, dedup: bool) -> list[tuple[str, float]]:
    """Pairs each kept token with its start time ``frame_index / rate`` (seconds).

    With ``dedup`` a token equal to the previous frame's token is dropped; the kept token keeps
    the time of the first frame of its run.
    """
    out: list[tuple[str, float]] = []
    prev = None
    for i, tok in enumerate(tokens):
        if not dedup or i == 0 or tok != prev:
            out.append((tok, i / rate))
        prev = tok
    return out


# ---------------------------------------------------------------------------------------------
# Unit dict <-> token string
# ---------------------------------------------------------------------------------------------


def units_to_string(
    units: dict[str, str],
    has_pitch: bool = False,
    has_style: bool = False,
    hubert_rate: float = 24.99,
    hubert_dedup: bool = True,
    hubert_key: str = "hubert",
    pitch_rate: float = STREAM_RATES["pitch"],
    pitch_dedup: bool = True,
    pitch_key: str = "pitch",
    style_rate: float = 1,
    style_dedup: bool = False,
    style_key: str = "style",
) -> str:
    """Merges the streams of a unit dict into one token string, ordered by time.

    Example (6 HuBERT frames = 0.24 s, 3 pitch frames, 1 style frame)::

        >>> units_to_string({"hubert": "78 42 81 159 316 259", "pitch": "13 13 3", "style": "81"},
        ...                 has_pitch=True, has_style=True)
        '[St81][Pi13][Hu78][Hu42][Hu81][Hu159][Pi3][Hu316][Hu259]'

    (The docstring of Meta's function shows the output of ``string_to_units``' example as this
    function's output; its code, which this one matches, orders tokens by time as above.)

    Args:
        units: unit dict; each stream is a space-separated string of integers, one per frame.
        has_pitch: include the pitch stream (``units[pitch_key]``).
        has_style: include the style stream (``units[style_key]``).
        hubert_rate, pitch_rate, style_rate: frame rates in Hz that place each token in time.
        hubert_dedup, pitch_dedup, style_dedup: drop tokens equal to the previous frame's.
        hubert_key, pitch_key, style_key: keys of the streams in ``units``.

    Returns:
        The token string. At equal times style tokens come first, then pitch, then HuBERT.

    Raises:
        UnitFormatError: a value that is not a unit id (``abc``, ``-5``), naming the stream.
    """
    streams = []
    if has_style:
        streams.append(("St", units[style_key], style_rate, style_dedup))
    if has_pitch:
        streams.append(("Pi", units[pitch_key], pitch_rate, pitch_dedup))
    streams.append(("Hu", units[hubert_key], hubert_rate, hubert_dedup))
    for prefix, stream, _, _ in streams:  # "abc" or "-5" would become text pieces such as [Huabc]
        check_unit_stream(stream, PREFIX_STREAM[prefix])

    # (time, stream rank, token): within a stream times strictly increase, so ranking by stream
    # reproduces a stable sort over the concatenation style + pitch + hubert.
    keyed: list[tuple[float, int, str]] = []
    for rank, (prefix, stream, rate, dedup) in enumerate(streams):
        for tok, t in timed_tokens(stream.split(), rate, dedup):
            keyed.append((t, rank, f"[{prefix}{tok}]"))
    keyed.sort(key=lambda k: (k[0], k[1]))
    return "".join(tok for _, _, tok in keyed)


# long: one pass of a state machine over the tokens (nine pieces of state that every branch updates) and a doctest docstring; split, that state would be passed back and forth
def string_to_units(
    gen: str,
    hubert_key: str = "hubert",
    pitch_key: str = "pitch",
    style_key: str = "style",
    duplicate_hubert_for_multiple_pitch: bool = False,
    *,
    fallback_style: int | None = None,
    rng: random.Random | None = None,
) -> dict[str, str]:
    """Turns a token string back into a unit dict aligned on the HuBERT tokens.

    Every HuBERT token gets the pitch and style tokens last seen before it; HuBERT tokens that
    precede the first pitch (style) token get the first pitch (style) token. Example::

        >>> string_to_units('[St81][Hu78][Pi13][Hu42][Hu81][Hu159][Hu316][Pi3][Hu259]')
        {'hubert': '78 42 81 159 316 259', 'pitch': '13 13 13 13 13 3', 'style': '81 81 81 81 81 81'}

    Args:
        gen: the string; text, markers and anything that is not a well-formed ``[HuN]``,
            ``[PiN]`` or ``[StN]`` token are ignored.
        hubert_key, pitch_key, style_key: keys of the returned dict.
        duplicate_hubert_for_multiple_pitch: when two pitch tokens follow each other with no
            HuBERT token between them, repeat the previous HuBERT token for the second one, so
            that no pitch token is lost.
        fallback_style: style token used when the string has pitch tokens but no style token.
            ``None`` picks one of Meta's most common styles (71, 68, 98) at random, as Meta's
            decoder does.
        rng: random generator for that pick (default: the ``random`` module).

    Returns:
        ``{hubert_key: ...}`` plus ``pitch_key`` / ``style_key`` when the string has pitch
        tokens / style tokens (or pitch tokens only, with the fallback style).

    Note: Meta's implementation splits on ``[`` and trims one character, so for malformed
    pieces such as ``[Hu12]abc`` it returns ``12]ab``; this one only accepts whole tokens.
    """
    hubert: list[str] = []
    pitch: list[str | None] = []
    style: list[str | None] = []
    prev_hubert: str | None = None
    prev_pitch: str | None = None
    prev_style: str | None = None
    first_pitch: str | None = None
    first_style: str | None = None
    prev_was_pitch = False
    for match in SPEECH_TOKEN_RE.finditer(gen):
        kind, value = match.group(1), match.group(2)
        if kind == "Hu":
            hubert.append(value)
            pitch.append(prev_pitch)
            style.append(prev_style)
            prev_hubert = value
            prev_was_pitch = False
        elif kind == "St":
            if first_style is None:
                first_style = value
            prev_style = value
        else:  # "Pi"
            if duplicate_hubert_for_multiple_pitch and prev_was_pitch:
                # prev_hubert can be None here (two pitch tokens before any HuBERT token); the
                # gap is filled with the first HuBERT token below.
                hubert.append(prev_hubert)  # type: ignore[arg-type]
                pitch.append(value)
                style.append(prev_style)
            if first_pitch is None:
                first_pitch = value
            prev_pitch = value
            prev_was_pitch = True

    if first_pitch is not None and first_style is None:
        if fallback_style is None:
            fallback_style = (rng or random).choice(MOST_COMMON_STYLES)
        first_style = str(fallback_style)
    first_hubert = next((h for h in hubert if h is not None), None)
    hubert = [first_hubert if h is None else h for h in hubert]  # type: ignore[misc]
    units = {hubert_key: " ".join(hubert)}
    if first_pitch is not None:
        units[pitch_key] = " ".join(first_pitch if p is None else p for p in pitch)
    if first_style is not None:
        units[style_key] = " ".join(first_style if s is None else s for s in style)
    return units


# ---------------------------------------------------------------------------------------------
# Speech vocabulary
# ---------------------------------------------------------------------------------------------


def speech_token(stream: str, index: int) -> str:
    """``speech_token("hubert", 12) == "[Hu12]"``."""
    return f"[{STREAM_PREFIX[stream]}{index}]"


def speech_vocabulary(num_hubert: int = 501, num_pitch: int = 0, num_style: int = 0) -> list[str]:
    """The speech pieces added to a text vocabulary, in id order.

    ``[Text]``, ``[Speech]``, then ``[Hu0..]``, ``[Pi0..]``, ``[St0..]``. Base Spirit LM uses
    ``num_hubert=501`` only; Expressive adds 64 pitch and 100 style tokens.
    """
    vocab = [TEXT_MARKER, SPEECH_MARKER]
    vocab += [speech_token("hubert", i) for i in range(num_hubert)]
    vocab += [speech_token("pitch", i) for i in range(num_pitch)]
    vocab += [speech_token("style", i) for i in range(num_style)]
    return vocab


# ---------------------------------------------------------------------------------------------
# Splitting generated strings into modality segments
# ---------------------------------------------------------------------------------------------

Modality = Literal["text", "speech"]


@dataclass
class Segment:
    """A run of one modality.

    ``text`` holds the text of a text segment; ``tokens`` the speech tokens (e.g. ``"[Hu12]"``)
    of a speech segment, in order.
    """

    modality: Modality
    text: str = ""
    tokens: list[str] = field(default_factory=list)

    def render(self) -> str:
        return self.text if self.modality == "text" else "".join(self.tokens)

    def units(self, **kwargs) -> dict[str, str]:
        """The unit dict of a speech segment (see :func:`string_to_units`)."""
        if self.modality != "speech":
            raise ValueError("units() is only defined for speech segments")
        return string_to_units(self.render(), **kwargs)


def split_modalities(s: str, strip: bool = True) -> list[Segment]:
    """Splits any string (e.g. an LM generation) into text and speech segments.

    Well-formed speech tokens (``[HuN]``, ``[PiN]``, ``[StN]``) make speech segments; everything
    else is text, malformed brackets included (``[Hu``, ``[Hu1x]``, ``[Foo]`` stay text). The
    markers ``[Text]`` and ``[Speech]`` end the current segment and are not kept. Consecutive
    pieces of the same modality merge into one segment. Never raises.

    Args:
        s: the string.
        strip: strip surrounding whitespace from text segments and drop the ones that become
            empty (sentencepiece decoding puts spaces around markers).
    """
    segments: list[Segment] = []

    boundary = False  # a marker was seen: the next piece opens a new segment

    def add_text(text: str) -> None:
        nonlocal boundary
        if strip and text.isspace():
            return  # spaces between speech tokens do not split a speech segment
        if segments and segments[-1].modality == "text" and not boundary:
            segments[-1].text += text
        else:
            segments.append(Segment("text", text=text))
        boundary = False

    def add_speech(token: str) -> None:
        nonlocal boundary
        if segments and segments[-1].modality == "speech" and not boundary:
            segments[-1].tokens.append(token)
        else:
            segments.append(Segment("speech", tokens=[token]))
        boundary = False

    pos = 0
    for match in _SEGMENT_RE.finditer(s):
        if match.start() > pos:
            add_text(s[pos : match.start()])
        token = match.group(0)
        if token in (TEXT_MARKER, SPEECH_MARKER):
            boundary = True
        else:
            add_speech(token)
        pos = match.end()
    if pos < len(s):
        add_text(s[pos:])

    if strip:
        for seg in segments:
            if seg.modality == "text":
                seg.text = seg.text.strip()
        segments = [seg for seg in segments if seg.modality == "speech" or seg.text]
    return segments


def join_modalities(segments: Iterable[Segment]) -> str:
    """Renders segments as an LM string with a marker before each segment."""
    return "".join(
        (TEXT_MARKER if seg.modality == "text" else SPEECH_MARKER) + seg.render() for seg in segments
    )
