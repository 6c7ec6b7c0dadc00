"""A ctypes binding to libespeak-ng that returns audio together with exact word and phone times.

The library and its data come from the ``espeakng-loader`` wheel (libespeak-ng 1.52, API revision
12 of ``speak_lib.h``). Synthesis runs in ``AUDIO_OUTPUT_SYNCHRONOUS`` mode: ``espeak_Synth``
returns only when the whole text is rendered, and meanwhile calls our callback with blocks of
22050 Hz int16 samples plus the events that happened in them. With
``espeakINITIALIZE_PHONEME_EVENTS | espeakINITIALIZE_PHONEME_IPA`` the events include one
``espeakEVENT_PHONEME`` per phoneme (IPA name, up to 8 UTF-8 bytes) besides ``espeakEVENT_WORD``;
every event carries ``sample``, its position in the output in samples since the start of the
message, and ``text_position``, the 1-based character offset of the word it belongs to.
:func:`align_events` turns these into word and phone segments; see its docstring for the two
quirks of espeak's event placement that it corrects.

Determinism. libespeak-ng keeps state across calls in static variables (the phase of the pitch
"flutter", noise generator, echo buffer, ...): rendering the same text twice in one process gives
different samples, and even a different number of samples. ``espeak_Terminate`` plus
``espeak_Initialize`` does not reset those statics. :class:`Espeak` therefore renders each text in
a child process forked from a parent that initialised the library and never synthesised
(``isolated=True``, the default): every child starts from the same pristine state, so the output
depends only on the text, the voice and ``rand_seed`` -- not on what the process rendered before,
nor on how work is split across processes. A fork costs about 10 ms, which still leaves the
synthesis hundreds of times faster than real time.

The library is not thread safe: use one :class:`Espeak` per process and parallelise with processes.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# ---------------------------------------------------------------------------------------------
# Constants from speak_lib.h (ESPEAK_API_REVISION 12).
# ---------------------------------------------------------------------------------------------
AUDIO_OUTPUT_SYNCHRONOUS = 2
INITIALIZE_PHONEME_EVENTS = 0x0001
INITIALIZE_PHONEME_IPA = 0x0002
INITIALIZE_DONT_EXIT = 0x8000

EVENT_LIST_TERMINATED = 0
EVENT_WORD = 1
EVENT_SENTENCE = 2
EVENT_MARK = 3
EVENT_PLAY = 4
EVENT_END = 5
EVENT_MSG_TERMINATED = 6
EVENT_PHONEME = 7
EVENT_SAMPLERATE = 8

POS_CHARACTER = 1
CHARS_UTF8 = 1

PARAM_RATE = 1
PARAM_VOLUME = 2
PARAM_PITCH = 3
PARAM_RANGE = 4
PARAM_WORDGAP = 7

EE_OK = 0
EE_NOT_FOUND = 2

#: Rates outside this range make espeak switch to its "sonic" time stretcher or clamp.
RATE_MIN, RATE_MAX = 80, 450

#: A gap between a word event and the word's first phoneme counts as that word's pre-pause
#: (stop closure) when its RMS is below this fraction of the whole output's RMS. Measured on
#: 1000 word boundaries of five voices: pre-pauses are at most 0.11 (echo of the f2/f4 variants),
#: the other case (frames of the previous phoneme, see :func:`align_events`) at least 0.43.
SILENT_GAP_RATIO = 0.25

#: Stress marks espeak prefixes to IPA vowels; removed so that a phone name is the segment only.
_STRESS_MARKS = "ˈˌ"


class EspeakError(RuntimeError):
    """libespeak-ng could not be loaded or initialised, or a synthesis failed."""


class _EventId(ctypes.Union):
    _fields_ = [
        ("number", ctypes.c_int),  # WORD and SENTENCE events: word / sentence number
        ("name", ctypes.c_char_p),  # MARK and PLAY events
        ("string", ctypes.c_char * 8),  # PHONEME events: UTF-8, NUL-terminated unless 8 bytes long
    ]


class _Event(ctypes.Structure):
    # espeak_EVENT; on x86-64: six 4-byte ints, an 8-byte aligned pointer, an 8-byte union = 40 bytes.
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),  # 1-based character offset in the text
        ("length", ctypes.c_int),  # word length in characters (WORD events)
        ("audio_position", ctypes.c_int),  # milliseconds (rounded); we use `sample` instead
        ("sample", ctypes.c_int),  # samples since the start of the message
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


@dataclass(frozen=True)
class Event:
    """One espeak event: ``kind`` is an ``EVENT_*`` constant, ``sample`` a position at the engine's
    sample rate, ``text_position`` the 1-based character offset, ``name`` the IPA phoneme (PHONEME
    events, empty for pauses) or the word number as a string (WORD events)."""

    kind: int
    text_position: int
    sample: int
    name: str = ""


@dataclass(frozen=True)
class Voice:
    """An espeak voice and its prosody parameters.

    Attributes:
        name: espeak voice name, optionally with a variant: ``"en-us"``, ``"en-us+f2"``, ``"en+whisper"``.
        rate: speaking rate in words per minute (80..450; espeak's default is 175).
        volume: amplitude, 0..200 (100 is espeak's default; above ~150 espeak compresses / distorts).
        pitch: base pitch on espeak's 0..100 scale, relative to the voice's own base (50 = default).
        pitch_range: pitch range on espeak's 0..100 scale (0 = monotone, 50 = default).
    """

    name: str = "en-us"
    rate: int = 175
    volume: int = 100
    pitch: int = 50
    pitch_range: int = 50

    def __post_init__(self) -> None:
        if not self.name or any(c.isspace() for c in self.name):
            raise ValueError(f"espeak voice name must be a non-empty word, got {self.name!r}")
        checks = (
            ("rate", self.rate, RATE_MIN, RATE_MAX),
            ("volume", self.volume, 1, 200),
            ("pitch", self.pitch, 0, 100),
            ("pitch_range", self.pitch_range, 0, 100),
        )
        for field_name, value, lo, hi in checks:
            if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
                raise ValueError(f"Voice.{field_name} must be an int in [{lo}, {hi}], got {value!r}")


@dataclass(frozen=True)
class Segment:
    """A labelled span ``[start, end)`` in samples at the synthesis sample rate.

    ``word_index`` is the index of the word a phone belongs to (-1 for words themselves).
    """

    label: str
    start: int
    end: int
    word_index: int = -1


@dataclass(frozen=True)
class Synthesis:
    """The result of one :meth:`Espeak.synthesize` call.

    Attributes:
        samples: int16 mono waveform at ``sample_rate`` Hz.
        sample_rate: Hz (22050 for libespeak-ng).
        words: one :class:`Segment` per input word, in order, non-overlapping.
        phones: one :class:`Segment` per phoneme (pauses excluded), in order, non-overlapping,
            each inside the span of its word.
    """

    samples: np.ndarray
    sample_rate: int
    words: list[Segment]
    phones: list[Segment]

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return len(self.samples) / self.sample_rate


def default_paths() -> tuple[str, str]:
    """(library path, espeak-ng-data path) from the ``espeakng-loader`` wheel."""
    try:
        import espeakng_loader
    except ImportError as e:  # pragma: no cover - it is a declared dependency
        raise EspeakError("the espeakng-loader package is not installed (pip install espeakng-loader)") from e
    return espeakng_loader.get_library_path(), espeakng_loader.get_data_path()


def build_text(words: Sequence[str], terminator: str = ".") -> tuple[str, list[int]]:
    """Joins words into the text given to espeak; returns it and each word's 0-based char offset."""
    starts, pos = [], 0
    for w in words:
        if not w or not all(c.isalpha() or c == "'" for c in w):
            raise ValueError(f"words must be alphabetic (digits and punctuation are read unpredictably), got {w!r}")
        starts.append(pos)
        pos += len(w) + 1
    return " ".join(words) + terminator, starts


def _word_of_position(text: str, word_starts: Sequence[int], text_position: int) -> int:
    """Index of the word an event's 1-based ``text_position`` refers to (-1 if none).

    Usually the position is the word's first character; at clause starts espeak sometimes points
    at the space or punctuation before the word, which then means the next word.
    """
    i = text_position - 1
    if i < 0:
        return 0 if word_starts else -1
    if i < len(text) and not text[i].isalpha():
        nxt = [k for k, s in enumerate(word_starts) if s > i]
        return nxt[0] if nxt else len(word_starts) - 1
    k = int(np.searchsorted(np.asarray(word_starts), i, side="right")) - 1
    return k


def align_events(
    text: str,
    word_starts: Sequence[int],
    samples: np.ndarray,
    events: Sequence[Event],
    phone_names: dict[int, list[str]] | None = None,
) -> tuple[list[Segment], list[Segment]]:
    """Derives word and phone segments (in samples) from espeak's events.

    Each PHONEME event starts a phone that lasts until the next PHONEME event; the last phone ends
    where the audio ends. Unnamed phonemes are either pauses (silent: they end the phone before
    them and belong to no phone) or transitions between vowels (voiced: their audio is added to
    the phone before them). Phones are given to words by ``text_position``. A word spans its
    phones, with two corrections for how espeak-ng queues its markers:

    * A word beginning with a stop, affricate or fricative gets a short silent *pre-pause* (the
      stop closure) that espeak renders after the WORD marker and before the PHONEME marker. That
      silence belongs to the word (and to its first phone), so the word starts at the WORD event.
    * For a word beginning with a vowel after a sonorant (``then it``, ``weather in``), espeak
      flushes the last frames of the previous phoneme *after* queuing the WORD marker, so the WORD
      event comes too early; the PHONEME event of the vowel is right and is used.

    The two cases are told apart by the energy between the WORD event and the first PHONEME
    event: silence (< :data:`SILENT_GAP_RATIO` of the output's RMS) is a pre-pause.

    espeak's English dictionary also has multi-word entries ("that the") that it pronounces as
    one word with one WORD event: all their phonemes point at the first word. Such a group is
    split at the phone boundaries that best match each word's own transcription
    (``phone_names``, from ``espeak_TextToPhonemes``; see :func:`split_phones`).

    Args:
        text: the text given to espeak (see :func:`build_text`).
        word_starts: 0-based character offset of each word in ``text``.
        samples: the rendered int16 (or float) waveform.
        events: WORD and PHONEME events (others are ignored) in output order.
        phone_names: word index -> IPA phonemes of that word alone, for the words of
            multi-word groups (see :meth:`Espeak.render`).

    Returns:
        (words, phones) as :class:`Segment` lists in samples.

    Raises:
        EspeakError: if a word got no phoneme, or the events are out of order.
    """
    n_words = len(word_starts)
    total = len(samples)
    x = np.asarray(samples, dtype=np.float64)
    rms_all = float(np.sqrt(np.mean(x * x))) if total else 0.0

    word_event_sample: dict[int, int] = {}
    for e in events:
        if e.kind == EVENT_WORD:
            k = _word_of_position(text, word_starts, e.text_position)
            if 0 <= k < n_words and k not in word_event_sample:
                word_event_sample[k] = e.sample
    spans = _raw_phone_spans(text, word_starts, [e for e in events if e.kind == EVENT_PHONEME], x, rms_all)
    _split_merged_words(text, n_words, spans, word_event_sample, phone_names or {})

    _start_words_at_pre_pauses(text, n_words, spans, word_event_sample, x, rms_all)
    # Phones and words from the corrected spans.
    words: list[Segment] = []
    phones: list[Segment] = []
    for name, start, end, k in spans:
        if name:
            phones.append(Segment(name, start, end, k))
    for k in range(n_words):
        own = [p for p in phones if p.word_index == k]
        label = text[word_starts[k] : text.index(" ", word_starts[k])] if k + 1 < n_words else text[word_starts[k] :]
        label = "".join(c for c in label if c.isalpha() or c == "'")
        words.append(Segment(label, own[0].start, own[-1].end))
    for a, b in zip(words, words[1:]):
        if b.start < a.end or a.end < a.start:
            raise EspeakError(f"word segments overlap in {text!r}: {a} then {b}")
    return words, phones


def _raw_phone_spans(text: str, word_starts: Sequence[int], phone_events: Sequence[Event], x: np.ndarray,
                     rms_all: float) -> list[list[Any]]:
    """Raw phone spans ``[name, start, end, word index or -1 for pauses]``: each PHONEME event to the
    next one (the last to the end of ``x``), pauses (empty names) kept as separators and voiced
    unnamed phonemes merged into the phone before them (see :func:`align_events`)."""
    n_words, total = len(word_starts), len(x)
    spans: list[list[Any]] = []
    for i, e in enumerate(phone_events):
        start = min(max(e.sample, 0), total)
        end = min(max(phone_events[i + 1].sample, 0), total) if i + 1 < len(phone_events) else total
        if end < start:
            raise EspeakError(f"phoneme events out of order in {text!r}: {e.sample} after a later event")
        name = e.name.strip(_STRESS_MARKS)
        k = _word_of_position(text, word_starts, e.text_position) if name else -1
        if name and not 0 <= k < n_words:
            raise EspeakError(f"phoneme {name!r} at text position {e.text_position} maps to no word of {text!r}")
        if not name and spans and spans[-1][0] and not _is_silent(x[start:end], rms_all):
            # An unnamed phoneme that is not silent is a transition (vowel hiatus such as
            # "radio", "the eleven"): its audio continues the previous phone.
            spans[-1][2] = end
            continue
        spans.append([name, start, end, k])
    return spans


def _start_words_at_pre_pauses(text: str, n_words: int, spans: list[list[Any]], word_event_sample: dict[int, int],
                               x: np.ndarray, rms_all: float) -> None:
    """Moves the start of each word whose WORD event is followed by silence (a stop's pre-pause)
    back to that event, in ``spans`` (see :func:`align_events`); EspeakError for a word without
    phonemes or with phonemes among another word's."""
    for k in range(n_words):
        idx = [i for i, s in enumerate(spans) if s[3] == k]
        if not idx:
            raise EspeakError(f"espeak produced no phoneme for word {k} of {text!r}")
        if any(spans[i][3] not in (k, -1) for i in range(idx[0], idx[-1] + 1)):
            raise EspeakError(f"phonemes of word {k} of {text!r} interleave with another word's")
        first = idx[0]
        w = word_event_sample.get(k)
        prev_start = spans[first - 1][1] if first > 0 else 0
        if w is not None and prev_start <= w < spans[first][1]:
            if _is_silent(x[w : spans[first][1]], rms_all):
                spans[first][1] = w
                if first > 0:
                    spans[first - 1][2] = w


def words_without_event(text: str, word_starts: Sequence[int], events: Sequence[Event]) -> list[int]:
    """Indices of words that got no WORD event (merged into the word before them by espeak)."""
    seen = {_word_of_position(text, word_starts, e.text_position) for e in events if e.kind == EVENT_WORD}
    return [k for k in range(len(word_starts)) if k not in seen]


def _phone_sub_cost(a: str, b: str) -> float:
    if a == b:
        return 0.0
    return 0.5 if set(a) & set(b) else 1.0  # "ɛ" ~ "ɛɹ", "ɹ" ~ "ɑːɹ": partly the same sound


def _edit_distance(a: Sequence[str], b: Sequence[str]) -> float:
    prev = [float(j) for j in range(len(b) + 1)]
    for i in range(1, len(a) + 1):
        cur = [float(i)] + [0.0] * len(b)
        for j in range(1, len(b) + 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + _phone_sub_cost(a[i - 1], b[j - 1]))
        prev = cur
    return prev[-1]


def split_phones(merged: Sequence[str], per_word: Sequence[Sequence[str]]) -> list[int]:
    """Splits a merged phone sequence among words; returns the number of phones of each word.

    Dynamic programming over the split points, minimising the phone edit distance between each
    part and that word's own transcription (``per_word``). Every word gets at least one phone;
    ties give the earlier word more phones (linking sounds such as the "r" of "there are").
    """
    n, m = len(merged), len(per_word)
    if n < m:
        raise ValueError(f"cannot split {n} phones among {m} words")
    inf = float("inf")
    # best[j][i]: cost of giving the first i phones to the first j words; back[j][i]: split point.
    best = [[inf] * (n + 1) for _ in range(m + 1)]
    back = [[0] * (n + 1) for _ in range(m + 1)]
    best[0][0] = 0.0
    for j in range(1, m + 1):
        for i in range(j, n - (m - j) + 1):
            for p in range(i - 1, j - 2, -1):  # later split points first: they win ties
                if best[j - 1][p] == inf:
                    continue
                c = best[j - 1][p] + _edit_distance(merged[p:i], per_word[j - 1])
                if c < best[j][i] - 1e-9:
                    best[j][i], back[j][i] = c, p
    sizes, i = [], n
    for j in range(m, 0, -1):
        p = back[j][i]
        sizes.append(i - p)
        i = p
    return sizes[::-1]


def _split_merged_words(
    text: str,
    n_words: int,
    spans: list[list[Any]],
    word_event_sample: dict[int, int],
    phone_names: dict[int, list[str]],
) -> None:
    """Reassigns the phones of a multi-word dictionary entry to its words, in place."""
    k = 0
    while k < n_words:
        m = k + 1
        while m < n_words and m not in word_event_sample and not any(s[3] == m for s in spans):
            m += 1
        if m > k + 1:  # words k+1 .. m-1 were swallowed by word k
            group = list(range(k, m))
            named = [i for i, s in enumerate(spans) if s[3] == k and s[0]]
            own = [phone_names.get(j, []) for j in group]
            if len(named) < len(group) or not all(own):
                raise EspeakError(
                    f"espeak read words {k}..{m - 1} of {text!r} as one word with {len(named)} phonemes; "
                    f"cannot split it (per-word phonemes {own})"
                )
            sizes = split_phones([spans[i][0] for i in named], own)
            pos = 0
            for j, c in zip(group, sizes):
                for i in named[pos : pos + c]:
                    spans[i][3] = j
                pos += c
            for s in spans:  # pauses inside the group stay pauses
                if s[3] == k and not s[0]:
                    s[3] = -1
        k = m


def _is_silent(segment: np.ndarray, rms_all: float) -> bool:
    if len(segment) == 0:
        return True
    return float(np.sqrt(np.mean(segment * segment))) <= SILENT_GAP_RATIO * rms_all


class Espeak:
    """One libespeak-ng instance for this process (the library has global state).

    Args:
        library_path: path of ``libespeak-ng.so``; default: the espeakng-loader wheel's copy.
        data_path: the ``espeak-ng-data`` folder; default: the wheel's copy.
        buffer_ms: length of the sample blocks passed to the callback (only affects speed).
    """

    _lock = threading.Lock()

    def __init__(self, library_path: str | None = None, data_path: str | None = None, buffer_ms: int = 200):
        default_lib, default_data = (None, None) if library_path and data_path else default_paths()
        self.library_path = library_path or default_lib
        self.data_path = data_path or default_data
        if not os.path.isdir(self.data_path):
            raise EspeakError(f"espeak-ng data folder not found: {self.data_path}")
        try:
            lib = ctypes.CDLL(self.library_path)
        except OSError as e:
            raise EspeakError(f"cannot load libespeak-ng from {self.library_path}: {e}") from e
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_Info.argtypes = [ctypes.POINTER(ctypes.c_char_p)]
        lib.espeak_Info.restype = ctypes.c_char_p
        self._has_rand_seed = hasattr(lib, "espeak_ng_SetRandSeed")
        if self._has_rand_seed:
            lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
            lib.espeak_ng_SetRandSeed.restype = None
        self._lib = lib

        # espeak_Initialize wants the folder that *contains* espeak-ng-data.
        parent = os.path.dirname(os.path.abspath(self.data_path)).encode()
        options = INITIALIZE_PHONEME_EVENTS | INITIALIZE_PHONEME_IPA | INITIALIZE_DONT_EXIT
        rate = lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, buffer_ms, parent, options)
        if rate <= 0:
            raise EspeakError(f"espeak_Initialize failed (data folder {self.data_path})")
        self.sample_rate = int(rate)
        self.version = (lib.espeak_Info(None) or b"?").decode()

        self._chunks: list[bytes] = []
        self._events: list[Event] = []
        self._callback = _SynthCallback(self._on_synth)  # keep a reference: C holds the pointer
        lib.espeak_SetSynthCallback(self._callback)
        self.used_in_process = False

    # -- the C callback --------------------------------------------------------------------
    def _on_synth(self, wav, num_samples, events) -> int:
        if num_samples > 0 and wav:
            self._chunks.append(ctypes.string_at(wav, num_samples * 2))
        i = 0
        while events[i].type != EVENT_LIST_TERMINATED:
            ev = events[i]
            if ev.type == EVENT_PHONEME:
                raw = bytes(ev.id.string)  # all 8 bytes: the name is not terminated when 8 long
                name = raw.split(b"\0", 1)[0].decode("utf-8", errors="ignore")
                self._events.append(Event(EVENT_PHONEME, ev.text_position, ev.sample, name))
            elif ev.type == EVENT_WORD:
                self._events.append(Event(EVENT_WORD, ev.text_position, ev.sample, str(ev.id.number)))
            elif ev.type in (EVENT_SENTENCE, EVENT_END, EVENT_MSG_TERMINATED):
                self._events.append(Event(ev.type, ev.text_position, ev.sample))
            i += 1
        return 0  # continue

    # -- synthesis ---------------------------------------------------------------------------
    def render(self, text: str, voice: Voice, rand_seed: int | None = 0) -> tuple[np.ndarray, list[Event], dict[int, list[str]]]:
        """Renders ``text`` in this process; returns (int16 samples, events, the phonemes of the
        words of multi-word dictionary entries, see :func:`align_events`).

        This changes the library's hidden state; prefer :meth:`synthesize`, which isolates it.
        """
        lib = self._lib
        with self._lock:
            self.used_in_process = True
            self._chunks, self._events = [], []
            err = lib.espeak_SetVoiceByName(voice.name.encode())
            if err != EE_OK:
                raise EspeakError(f"espeak voice {voice.name!r} not found (error {err}) in {self.data_path}")
            for param, value in (
                (PARAM_RATE, voice.rate),
                (PARAM_VOLUME, voice.volume),
                (PARAM_PITCH, voice.pitch),
                (PARAM_RANGE, voice.pitch_range),
                (PARAM_WORDGAP, 0),
            ):
                if lib.espeak_SetParameter(param, value, 0) != EE_OK:
                    raise EspeakError(f"espeak_SetParameter({param}, {value}) failed")
            if self._has_rand_seed and rand_seed is not None:
                lib.espeak_ng_SetRandSeed(rand_seed & 0x7FFFFFFF)
            data = text.encode("utf-8") + b"\0"
            buf = ctypes.create_string_buffer(data, len(data))
            # No espeakENDPAUSE flag: the caller adds its own silences.
            err = lib.espeak_Synth(buf, len(data), 0, POS_CHARACTER, 0, CHARS_UTF8, None, None)
            if err != EE_OK:
                raise EspeakError(f"espeak_Synth failed with error {err} for {text!r}")
            samples = np.frombuffer(b"".join(self._chunks), dtype="<i2").copy()
            events, self._chunks, self._events = self._events, [], []
            names = self._merged_word_phonemes(text, events)
        return samples, events, names

    def _merged_word_phonemes(self, text: str, events: list[Event]) -> dict[int, list[str]]:
        """Phonemes of each word of the multi-word groups espeak made (see :func:`align_events`)."""
        words = text.rstrip(".?!").split(" ")
        starts = [sum(len(w) + 1 for w in words[:i]) for i in range(len(words))]
        missing = words_without_event(text, starts, events)
        wanted = sorted({j for k in missing for j in (k - 1, k) if j >= 0})
        return {j: self.phonemes(words[j]) for j in wanted}

    def phonemes(self, word: str) -> list[str]:
        """The IPA phonemes (stress marks removed) espeak gives ``word`` on its own, in the
        current voice's language."""
        lib = self._lib
        if not getattr(lib.espeak_TextToPhonemes, "_configured", False):
            lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int]
            lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
            lib.espeak_TextToPhonemes._configured = True
        buf = ctypes.create_string_buffer(word.encode("utf-8") + b"\0")
        ptr = ctypes.c_void_p(ctypes.addressof(buf))
        # phonememode: bit 1 = IPA names, bits 8-23 = separator between phonemes ("_").
        mode = 0x02 | (ord("_") << 8)
        names: list[str] = []
        while ptr.value:
            out = lib.espeak_TextToPhonemes(ctypes.byref(ptr), CHARS_UTF8, mode)
            names += [n.strip(_STRESS_MARKS) for n in (out or b"").decode("utf-8", errors="ignore").split("_")]
        return [n for n in names if n]

    def synthesize(
        self,
        words: Sequence[str],
        voice: Voice,
        terminator: str = ".",
        rand_seed: int = 0,
        isolated: bool = True,
    ) -> Synthesis:
        """Renders one sentence and aligns its words and phones.

        Args:
            words: the words of the sentence, alphabetic (``["the", "cat", "sleeps"]``).
            voice: voice and prosody.
            terminator: final punctuation, which sets the intonation (``"."``, ``"?"``, ``"!"``).
            rand_seed: seed of espeak's noise generator (breathy and whispered voices).
            isolated: render in a forked child so that the result does not depend on what this
                process rendered before (see the module docstring). Without ``os.fork`` (Windows)
                rendering happens in-process and is reproducible only within a fresh process.

        Returns:
            :class:`Synthesis` with samples at :attr:`sample_rate` Hz and segments in samples.
        """
        return self.synthesize_many([(words, terminator)], voice, rand_seed, isolated)[0]

    def synthesize_many(
        self,
        sentences: Sequence[tuple[Sequence[str], str]],
        voice: Voice,
        rand_seed: int = 0,
        isolated: bool = True,
    ) -> list[Synthesis]:
        """Renders several sentences one after the other in one child process (one fork).

        Args:
            sentences: (words, terminator) pairs, see :meth:`synthesize`.
            voice: voice and prosody for all of them.
            rand_seed: seed of espeak's noise generator, set once before the first sentence.
            isolated: see :meth:`synthesize`.

        Returns:
            One :class:`Synthesis` per sentence.
        """
        texts = []
        for words, terminator in sentences:
            if not words:
                raise ValueError("every sentence needs at least one word")
            texts.append(build_text(words, terminator))

        def work() -> list[tuple[np.ndarray, list[Event], dict[int, list[str]]]]:
            return [self.render(text, voice, rand_seed if i == 0 else None) for i, (text, _) in enumerate(texts)]

        rendered = _in_forked_child(work) if isolated and hasattr(os, "fork") else work()
        out = []
        for (text, starts), (samples, events, names) in zip(texts, rendered):
            if len(samples) == 0:
                raise EspeakError(f"espeak produced no audio for {text!r} with voice {voice.name!r}")
            word_segs, phone_segs = align_events(text, starts, samples, events, names)
            out.append(Synthesis(samples, self.sample_rate, word_segs, phone_segs))
        return out


def _in_forked_child(fn: Callable[[], Any]) -> Any:
    """Runs ``fn`` in a forked child and returns its (picklable) result or re-raises its error."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into the caller's code
        status = 0
        try:
            os.close(read_fd)
            try:
                payload = ("ok", fn())
            except BaseException as e:  # noqa: BLE001 - everything goes back to the parent
                payload = ("error", f"{type(e).__name__}: {e}")
            with os.fdopen(write_fd, "wb") as f:
                f.write(pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL))
        except BaseException:  # noqa: BLE001
            status = 1
        finally:
            os._exit(status)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as f:  # read everything before waiting: the pipe buffer is small
        data = f.read()
    _, status = os.waitpid(pid, 0)
    if not data:
        raise EspeakError(f"espeak child process died without a result (wait status {status})")
    kind, value = pickle.loads(data)
    if kind == "error":
        raise EspeakError(value)
    return value


def library_version(library_path: str | None = None) -> str:
    """libespeak-ng's version string ("1.52.0"), read without initialising the library."""
    lib = ctypes.CDLL(library_path or default_paths()[0])
    lib.espeak_Info.argtypes = [ctypes.c_void_p]
    lib.espeak_Info.restype = ctypes.c_char_p
    return (lib.espeak_Info(None) or b"?").decode()


def variant_file(name: str, data_path: str | None = None) -> str:
    """The text of one of espeak's voice variants (``voices/!v/<name>``), e.g. ``"f2"``."""
    data_path = data_path or default_paths()[1]
    path = os.path.join(data_path, "voices", "!v", name)
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise EspeakError(f"espeak voice variant {name!r} not found at {path}") from e


def custom_data_dir(variants: dict[str, str], root: str | None = None, data_path: str | None = None) -> str:
    """An espeak-ng-data folder with extra voice variants; returns its path.

    espeak only looks for variants in ``<data>/voices/!v``, and the wheel's folder should not be
    written to. The new folder links every entry of the wheel's data except ``voices/!v``, which
    holds links to the wheel's variants plus the new ``variants`` (name -> file text, in espeak's
    voice file syntax). It is named after a hash of its content under ``root`` (default: the
    system temp folder), built in a temporary folder and renamed into place, so concurrent
    processes can call this safely and later calls reuse it.
    """
    import hashlib
    import shutil
    import tempfile

    src = os.path.abspath(data_path or default_paths()[1])
    for name in variants:
        if not name or "/" in name or "\\" in name or name.startswith("."):
            raise ValueError(f"bad voice variant name {name!r}")
    digest = hashlib.sha256(repr((src, sorted(variants.items()))).encode()).hexdigest()[:16]
    root = root or tempfile.gettempdir()
    final = os.path.join(root, f"spiritlm-espeak-{digest}")
    data = os.path.join(final, "espeak-ng-data")
    if os.path.isdir(os.path.join(data, "voices", "!v")):
        return data
    os.makedirs(root, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".spiritlm-espeak-", dir=root)
    try:
        tmp_data = os.path.join(tmp, "espeak-ng-data")
        os.makedirs(os.path.join(tmp_data, "voices", "!v"))

        def link(source: str, target: str) -> None:
            try:
                os.symlink(source, target)
            except OSError:  # no symlinks (some Windows setups): copy instead
                (shutil.copytree if os.path.isdir(source) else shutil.copy2)(source, target)

        for entry in os.listdir(src):
            if entry != "voices":
                link(os.path.join(src, entry), os.path.join(tmp_data, entry))
        for entry in os.listdir(os.path.join(src, "voices")):
            if entry != "!v":
                link(os.path.join(src, "voices", entry), os.path.join(tmp_data, "voices", entry))
        for entry in os.listdir(os.path.join(src, "voices", "!v")):
            link(os.path.join(src, "voices", "!v", entry), os.path.join(tmp_data, "voices", "!v", entry))
        for name, content in variants.items():
            target = os.path.join(tmp_data, "voices", "!v", name)
            if os.path.lexists(target):
                os.remove(target)
            with open(target, "w", encoding="utf-8") as f:
                f.write(content)
        try:  # atomic: first writer wins (os.rename fails on a non-empty target), unlike atomic_dir's replace
            os.rename(tmp, final)
        except OSError:  # another process won the race: use its folder
            if not os.path.isdir(os.path.join(data, "voices", "!v")):
                raise
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return data


_ENGINE: Espeak | None = None


def get_engine() -> Espeak:
    """The process-wide :class:`Espeak` (created on first use, with the wheel's library and data)."""
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = Espeak()
    return _ENGINE
