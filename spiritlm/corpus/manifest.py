"""Utterance manifests: JSONL files with one utterance (audio + text + alignment) per line.

Format (``docs/formats.md``): each line is a JSON object with

=============== ========================================================================
``id``          unique string
``audio``       path of the audio file; relative paths are relative to the manifest's folder
``sample_rate`` int, Hz, of the audio file
``duration``    float, seconds (= samples / sample_rate)
``speaker``     string
``style``       string (``"neutral"`` when a corpus has no styles)
``text``        the transcript
``words``       list of ``{"word", "start", "end"}``, seconds from the start of the audio,
                ordered and non-overlapping (may be empty when no alignment is known)
``phones``      optional, list of ``{"phone", "start", "end"}``, seconds, ordered
``sentiment``   optional string (``positive`` / ``negative`` / ``neutral``)
``intent``      optional string
``split``       optional string (``train`` / ``valid`` / ``test``)
=============== ========================================================================

Other keys (``source``, ``slots``, ...) are kept in :attr:`Utterance.extra` and written back.

Use :func:`read_manifest` / :func:`iter_manifest` to load (strict schema: a bad line raises
:class:`ManifestError` naming the file and line; ``required=AUDIO_KEYS`` reads the manifests of
other corpora that only list ``id`` and ``audio``, checking whatever other keys they have), :func:`write_manifest` to save, and
:func:`check_manifest` to validate a whole file -- schema, audio files, durations, alignments --
collecting every problem instead of stopping at the first.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

#: Keys every line must have.
REQUIRED_KEYS = ("id", "audio", "sample_rate", "duration", "speaker", "style", "text", "words")
#: The keys a manifest needs for tokenizing and vocoding audio (``read_manifest(path, required=AUDIO_KEYS)``).
AUDIO_KEYS = ("id", "audio")
#: Optional keys with a field of their own in :class:`Utterance`.
OPTIONAL_KEYS = ("phones", "sentiment", "intent", "split")
#: ``duration`` may differ from the audio file's length by this much (seconds).
DURATION_TOLERANCE = 0.01
#: Alignment times may overlap or pass the end by this much (seconds): rounding of the writer.
TIME_EPSILON = 1e-4


class ManifestError(ValueError):
    """A manifest line that cannot be read; the message is ``<path>:<line>: <reason>``."""

    def __init__(self, path: str, line: int | None, reason: str):
        self.path, self.line, self.reason = str(path), line, reason
        super().__init__(f"{path}:{line}: {reason}" if line is not None else f"{path}: {reason}")


@dataclass
class Word:
    """A word and its time span in seconds from the start of the audio."""

    word: str
    start: float
    end: float

    def to_json(self) -> dict[str, Any]:
        return {"word": self.word, "start": self.start, "end": self.end}


@dataclass
class Phone:
    """A phone (IPA for the synthetic corpus) and its time span in seconds."""

    phone: str
    start: float
    end: float

    def to_json(self) -> dict[str, Any]:
        return {"phone": self.phone, "start": self.start, "end": self.end}


@dataclass
class Utterance:
    """One manifest line.

    Attributes:
        id: unique identifier.
        audio: path of the audio file. :func:`read_manifest` makes it absolute; a relative path
            in memory is relative to the current working directory.
        sample_rate: Hz.
        duration: seconds.
        speaker: speaker label.
        style: expressive style label.
        text: transcript.
        words: word alignment (seconds), possibly empty.
        phones: phone alignment (seconds) or None.
        sentiment: sentiment label or None.
        intent: intent label or None.
        split: split name or None.
        extra: any other keys of the line, written back unchanged.

    A manifest read with ``required=AUDIO_KEYS`` may leave ``sample_rate``, ``duration``,
    ``speaker``, ``style`` and ``text`` None and ``words`` empty.
    """

    id: str
    audio: str
    sample_rate: int | None
    duration: float | None
    speaker: str | None
    style: str | None
    text: str | None
    words: list[Word]
    phones: list[Phone] | None = None
    sentiment: str | None = None
    intent: str | None = None
    split: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_samples(self) -> int:
        """``duration * sample_rate``, rounded."""
        return int(round(self.duration * self.sample_rate))  # type: ignore[operator]

    def segments(self, kind: str = "phones") -> list[tuple[str, float, float]] | None:
        """``phones`` or ``words`` as ``(label, start s, end s)`` tuples (None when absent)."""
        spans = self.phones if kind == "phones" else self.words
        if spans is None:
            return None
        return [(s.phone if isinstance(s, Phone) else s.word, s.start, s.end) for s in spans]

    def to_json(self, base_dir: str | None = None) -> dict[str, Any]:
        """The line as a dict; ``audio`` is made relative to ``base_dir`` when it lies under it."""
        audio = self.audio
        if base_dir is not None:
            audio = _relative_audio(audio, base_dir)
        d: dict[str, Any] = {
            "id": self.id,
            "audio": audio,
            "sample_rate": self.sample_rate,
            "duration": self.duration,
            "speaker": self.speaker,
            "style": self.style,
            "text": self.text,
            "words": [w.to_json() for w in self.words],
        }
        if self.phones is not None:
            d["phones"] = [p.to_json() for p in self.phones]
        for key in ("sentiment", "intent"):
            if getattr(self, key) is not None:
                d[key] = getattr(self, key)
        extra = dict(self.extra)
        if "slots" in extra:  # next to the intent it describes
            d["slots"] = extra.pop("slots")
        if self.split is not None:
            d["split"] = self.split
        for key, value in extra.items():
            if key in d or key in REQUIRED_KEYS or key in OPTIONAL_KEYS:
                raise ValueError(f"Utterance.extra of {self.id!r} repeats the field {key!r}")
            d[key] = value
        return d

    @classmethod
    def from_json(cls, obj: Any, base_dir: str | None = None, required: tuple[str, ...] = REQUIRED_KEYS) -> Utterance:
        """Builds an utterance from a parsed line; raises ValueError listing its schema problems.

        ``audio`` is resolved against ``base_dir`` when relative. ``required``: the keys the line
        must have (the others are checked when present and None when absent).
        """
        problems = schema_problems(obj, required)
        if problems:
            raise ValueError("; ".join(problems))
        audio = obj["audio"]
        if base_dir is not None and not os.path.isabs(audio):
            audio = os.path.normpath(os.path.join(base_dir, audio))
        phones = obj.get("phones")
        return cls(
            id=obj["id"],
            audio=audio,
            sample_rate=None if obj.get("sample_rate") is None else int(obj["sample_rate"]),
            duration=None if obj.get("duration") is None else float(obj["duration"]),
            speaker=obj.get("speaker"),
            style=obj.get("style"),
            text=obj.get("text"),
            words=[Word(w["word"], float(w["start"]), float(w["end"])) for w in obj.get("words", [])],
            phones=None if phones is None else [Phone(p["phone"], float(p["start"]), float(p["end"])) for p in phones],
            sentiment=obj.get("sentiment"),
            intent=obj.get("intent"),
            split=obj.get("split"),
            extra={k: v for k, v in obj.items() if k not in REQUIRED_KEYS and k not in OPTIONAL_KEYS},
        )


# ------------------------------------------------------------------------------------------------
# Schema
# ------------------------------------------------------------------------------------------------
def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _segments_schema(obj: dict, key: str, label: str) -> list[str]:
    segs = obj[key]
    if not isinstance(segs, list):
        return [f"{key!r} must be a list, got {type(segs).__name__}"]
    problems = []
    for i, s in enumerate(segs):
        if not isinstance(s, dict):
            problems.append(f"{key}[{i}] must be an object with {label!r}, 'start', 'end'")
            continue
        missing = [k for k in (label, "start", "end") if k not in s]
        if missing:
            problems.append(f"{key}[{i}] lacks {', '.join(map(repr, missing))}")
            continue
        if not isinstance(s[label], str) or not s[label]:
            problems.append(f"{key}[{i}].{label} must be a non-empty string")
        for t in ("start", "end"):
            if not _is_number(s[t]) or not math.isfinite(s[t]):
                problems.append(f"{key}[{i}].{t} must be a finite number of seconds, got {s[t]!r}")
    return problems


def schema_problems(obj: Any, required: tuple[str, ...] = REQUIRED_KEYS) -> list[str]:
    """Every schema problem of one parsed line (empty when it is valid); ``required``: the keys it must have."""
    if not isinstance(obj, dict):
        return [f"line must be a JSON object, got {type(obj).__name__}"]
    missing = [k for k in required if k not in obj]
    problems = [f"missing key {k!r}" for k in missing]
    for key in ("id", "audio", "speaker", "style", "text"):
        if key in obj and not isinstance(obj[key], str) and (key in required or obj[key] is not None):
            problems.append(f"{key!r} must be a string, got {type(obj[key]).__name__}")
    for key in ("id", "audio"):
        if isinstance(obj.get(key), str) and not obj[key]:
            problems.append(f"{key!r} must not be empty")
    if "sample_rate" in obj:
        sr = obj["sample_rate"]
        if not isinstance(sr, int) or isinstance(sr, bool) or sr <= 0:
            problems.append(f"'sample_rate' must be a positive integer (Hz), got {sr!r}")
    if "duration" in obj:
        d = obj["duration"]
        if not _is_number(d) or not math.isfinite(d) or d <= 0:
            problems.append(f"'duration' must be a positive finite number of seconds, got {d!r}")
    if "words" in obj:
        problems += _segments_schema(obj, "words", "word")
    if obj.get("phones") is not None:
        problems += _segments_schema(obj, "phones", "phone")
    for key in ("sentiment", "intent", "split"):
        if obj.get(key) is not None and not isinstance(obj[key], str):
            problems.append(f"{key!r} must be a string or null, got {type(obj[key]).__name__}")
    return problems


def timing_problems(utt: Utterance) -> list[str]:
    """Alignment problems: spans with start > end, outside [0, duration], unordered/overlapping."""
    problems = []
    for key, segs in (("words", utt.words), ("phones", utt.phones or [])):
        prev_end = 0.0
        for i, s in enumerate(segs):
            name = getattr(s, "word", None) or getattr(s, "phone", "")
            where = f"{key}[{i}] ({name!r} {s.start}-{s.end})"
            if s.start > s.end:
                problems.append(f"{where}: start after end")
            if s.start < -TIME_EPSILON or s.end > utt.duration + TIME_EPSILON:
                problems.append(f"{where}: outside the audio [0, {utt.duration}]")
            if i > 0 and s.start < prev_end - TIME_EPSILON:
                problems.append(f"{where}: starts before the previous one ends ({prev_end}): not ordered or overlapping")
            prev_end = max(prev_end, s.end)
    return problems


# ------------------------------------------------------------------------------------------------
# Reading and writing
# ------------------------------------------------------------------------------------------------
def _lines(path: str) -> Iterator[tuple[int, str]]:
    try:
        f = open(path, encoding="utf-8")
    except OSError as e:
        raise ManifestError(path, None, f"cannot open manifest: {e.strerror or e}") from e
    with f:
        for lineno, line in enumerate(f, start=1):
            if line.strip():  # blank lines are allowed (and skipped)
                yield lineno, line


def _parse(path: str, lineno: int, line: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise ManifestError(path, lineno, f"invalid JSON: {e.msg} (column {e.colno})") from None


def iter_manifest(path: str | os.PathLike, *, required: tuple[str, ...] = REQUIRED_KEYS) -> Iterator[Utterance]:
    """Yields the utterances of a manifest one by one (``audio`` made absolute); ``required`` as
    in :func:`read_manifest` (duplicate ids are not checked here).

    Raises:
        ManifestError: unreadable file, bad JSON or schema problem (with the line number).
    """
    path = os.fspath(path)
    base = os.path.dirname(os.path.abspath(path))
    for lineno, line in _lines(path):
        obj = _parse(path, lineno, line)
        try:
            yield Utterance.from_json(obj, base, required)
        except ValueError as e:
            raise ManifestError(path, lineno, str(e)) from None


def read_manifest(path: str | os.PathLike, *, required: tuple[str, ...] = REQUIRED_KEYS) -> list[Utterance]:
    """All utterances of a manifest, in file order, with absolute ``audio`` paths.

    Args:
        path: the JSONL file.
        required: the keys every line must have: the whole schema (default) or ``AUDIO_KEYS``
            for the tokenizers and the vocoder, which need only ``id`` and ``audio``.

    Raises:
        ManifestError: unreadable file, bad JSON, schema problem or duplicate id, naming the
            file and line number.
    """
    utts: list[Utterance] = []
    seen: dict[str, int] = {}
    path = os.fspath(path)
    base = os.path.dirname(os.path.abspath(path))
    for lineno, line in _lines(path):
        obj = _parse(path, lineno, line)
        try:
            utt = Utterance.from_json(obj, base, required)
        except ValueError as e:
            raise ManifestError(path, lineno, str(e)) from None
        if utt.id in seen:
            raise ManifestError(path, lineno, f"duplicate id {utt.id!r} (first on line {seen[utt.id]})")
        seen[utt.id] = lineno
        utts.append(utt)
    return utts


def line_numbers(path: str | os.PathLike) -> dict[str, int]:
    """``{id: line number}`` of a manifest's lines (for messages that name the line of an utterance)."""
    out: dict[str, int] = {}
    for lineno, line in _lines(os.fspath(path)):
        try:
            uid = json.loads(line).get("id")
        except (json.JSONDecodeError, AttributeError):
            continue
        if isinstance(uid, str):
            out.setdefault(uid, lineno)
    return out


def read_audio_manifest(path: str | os.PathLike) -> list[Utterance]:
    """``read_manifest(path, required=AUDIO_KEYS)``: the reader of the tokenizers and the vocoder,
    which need only ``id`` and ``audio`` (``speaker``, ``style``, ``split``, ``phones`` when given)."""
    return read_manifest(path, required=AUDIO_KEYS)


def _relative_audio(audio: str, base_dir: str) -> str:
    absolute = os.path.abspath(audio)
    base = os.path.abspath(base_dir)
    if os.path.commonpath([absolute, base]) == base:
        return os.path.relpath(absolute, base).replace(os.sep, "/")
    return absolute


def write_manifest(path: str | os.PathLike, utts: Iterable[Utterance]) -> None:
    """Writes utterances as JSONL (UTF-8, one object per line, keys in the documented order).

    Audio paths under the manifest's folder are written relative to it (portable corpora), other
    paths absolute. The file is written to a temporary name and renamed, so readers never see a
    half-written manifest. Non-finite numbers raise ValueError (JSON has no NaN).
    """
    from spiritlm.atomic import atomic_file

    path = os.fspath(path)
    base = os.path.dirname(os.path.abspath(path))
    with atomic_file(path, encoding="utf-8") as f:
        for utt in utts:
            f.write(json.dumps(utt.to_json(base), ensure_ascii=False, allow_nan=False))
            f.write("\n")


# ------------------------------------------------------------------------------------------------
# Checking
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Problem:
    """One problem of a manifest line (``line`` is 1-based; ``id`` is None when unknown)."""

    line: int
    id: str | None
    reason: str

    def __str__(self) -> str:
        return f"line {self.line} ({self.id if self.id is not None else '?'}): {self.reason}"


@dataclass
class CheckReport:
    """Result of :func:`check_manifest`.

    Attributes:
        path: the manifest.
        num_lines: non-blank lines read.
        num_ok: lines without any problem.
        total_seconds: sum of the valid lines' durations.
        problems: every problem found, in line order.
    """

    path: str
    num_lines: int = 0
    num_ok: int = 0
    total_seconds: float = 0.0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and self.num_lines > 0

    @property
    def bad_lines(self) -> list[int]:
        return sorted({p.line for p in self.problems if p.line > 0})

    def summary(self) -> str:
        status = "OK" if self.ok else f"{len(self.problems)} problem(s) on {len(self.bad_lines)} line(s)"
        return (
            f"{self.path}: {self.num_lines} utterances, {self.num_ok} valid, "
            f"{self.total_seconds / 3600:.3f} h; {status}"
        )


def check_manifest(
    path: str | os.PathLike, check_audio: bool = True, expected_sample_rate: int | None = None
) -> CheckReport:
    """Validates every line of a manifest and collects all problems.

    Checks: JSON syntax; schema and types (:func:`schema_problems`, NaN and infinities
    included); duplicate ids; with ``check_audio``, that the audio file passes the validator
    ``spiritlm tokenize`` applies (:func:`spiritlm.audio.validate_audio_file`: readable, finite,
    long enough; any channel count and rate, as they are downmixed and resampled), has the
    line's ``sample_rate`` and a length within :data:`DURATION_TOLERANCE`
    seconds of ``duration``; alignments (:func:`timing_problems`); optionally that every line
    has ``expected_sample_rate``.

    Returns:
        :class:`CheckReport`; an unreadable manifest gives one problem on line 0.
    """
    path = os.fspath(path)
    report = CheckReport(path)
    base = os.path.dirname(os.path.abspath(path))
    seen: dict[str, int] = {}
    try:
        lines = list(_lines(path))
    except ManifestError as e:
        report.problems.append(Problem(0, None, e.reason))
        return report
    if not lines:
        report.problems.append(Problem(0, None, "manifest is empty"))
    for lineno, line in lines:
        report.num_lines += 1
        before = len(report.problems)

        def bad(reason: str, uid: str | None = None) -> None:
            report.problems.append(Problem(lineno, uid, reason))

        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            bad(f"invalid JSON: {e.msg} (column {e.colno})")
            continue
        uid = obj.get("id") if isinstance(obj, dict) and isinstance(obj.get("id"), str) else None
        if uid is not None:
            if uid in seen:
                bad(f"duplicate id (first on line {seen[uid]})", uid)
            else:
                seen[uid] = lineno
        schema = schema_problems(obj)
        for reason in schema:
            bad(reason, uid)
        if schema:
            continue
        utt = Utterance.from_json(obj, base)
        if expected_sample_rate is not None and utt.sample_rate != expected_sample_rate:
            bad(f"sample_rate {utt.sample_rate} Hz, expected {expected_sample_rate} Hz", uid)
        if check_audio:
            for reason in _audio_problems(utt):
                bad(reason, uid)
        for reason in timing_problems(utt):
            bad(reason, uid)
        if len(report.problems) == before:
            report.num_ok += 1
            report.total_seconds += utt.duration
    return report


def _audio_problems(utt: Utterance) -> list[str]:
    from spiritlm.audio import AudioError, audio_info, validate_audio_file

    if not os.path.exists(utt.audio):
        return [f"audio file missing: {utt.audio}"]
    try:
        info = audio_info(utt.audio)
    except AudioError as e:  # "<path>: not a readable audio file (<soundfile's reason>)"
        return [f"audio file unreadable: {e}"]
    problems = []
    # several channels or another sample rate are no problem: every reader of audio (spiritlm.audio.load_audio,
    # as spiritlm tokenize and the vocoder use it) averages the channels and resamples to 16 kHz
    if info.sample_rate != utt.sample_rate:
        problems.append(f"sample_rate {utt.sample_rate} Hz but the audio file is at {info.sample_rate} Hz")
    elif abs(info.duration - utt.duration) > DURATION_TOLERANCE:
        problems.append(
            f"duration {utt.duration} s but the audio lasts {info.duration:.5f} s "
            f"({info.num_samples} samples)"
        )

    try:  # the validator spiritlm tokenize applies: a file that passes here tokenizes
        validate_audio_file(utt.audio)
    except AudioError as e:
        problems.append(str(e))
    return problems
