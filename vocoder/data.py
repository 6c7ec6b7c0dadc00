"""Vocoder training data: manifest audio joined with Meta's units JSONL, cut into random aligned segments.

Inputs:

* a corpus manifest (JSONL: ``id``, ``audio``, ``speaker``, ``split``; see docs/formats.md);
* a units JSONL as ``spiritlm tokenize`` writes it (Meta's format): ``{"id", "hubert": "12 7 7 …",
  "pitch": "…", "style": "…"}``, space-separated ids at 25 Hz (640 samples at 16 kHz), 12.5 Hz
  and 1 Hz, not deduplicated. Lines are joined to the manifest by ``id``.

Each utterance keeps ``T = min(len(hubert), samples // 640)`` units and exactly ``T * 640``
samples (the tokenizer's last partial frame is dropped, as speech-resynthesis does). Pitch and
style codes are repeated to one code per unit (×2, ×25, padded with the last code and cut to
``T`` — the rule of :func:`spiritlm.vocoder.model.upsample_codes`), so a segment may start at any
unit and its pitch/style slices still line up with its audio.

Speakers: the sorted distinct ``speaker`` names of the whole manifest, index = line of
``speakers.txt``. Bad units lines (unparsable JSON, missing or empty ``hubert``, non-integer or
negative ids, ids beyond the vocoder's tables, no manifest entry, a unit count that does not
match the audio's length) are skipped and counted, each with a message ``file:line: problem``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..audio import AudioError, load_audio
from ..constants import SAMPLE_RATE, STREAM_RATES, UNIT_HOP
from ..errors import UserError
from ..formats import deduplicate
from ..tensors import pad_batch
from ..units_jsonl import iter_unit_lines

PITCH_RATIO = round(STREAM_RATES["hubert"] / STREAM_RATES["pitch"])
STYLE_RATIO = round(STREAM_RATES["hubert"] / STREAM_RATES["style"])
#: a units line may differ from ``samples // 640`` by this many frames (tokenizers round the last frame differently)
LENGTH_TOLERANCE = 2


@dataclass
class Utterance:
    """One training utterance, everything at the unit rate.

    Attributes:
        id: manifest id.
        wav: float32 ``(T * 640,)`` at 16 kHz.
        units: int64 ``(T,)`` HuBERT units.
        pitch: int64 ``(T,)`` pitch code of each unit, or None.
        style: int64 ``(T,)`` style code of each unit, or None.
        speaker: speaker index (line of ``speakers.txt``).
        split: manifest split (None when absent).
        raw: the units line as read (frame-rate strings), for evaluation.
        f0: float32 ``(T * 8,)`` F0 of ``wav`` in Hz at 200 Hz (0 = unvoiced), for a vocoder
            with a harmonic source (:func:`attach_f0`); None otherwise.
    """

    id: str
    wav: np.ndarray
    units: np.ndarray
    pitch: np.ndarray | None
    style: np.ndarray | None
    speaker: int
    split: str | None
    raw: dict = field(default_factory=dict)
    f0: np.ndarray | None = None

    @property
    def num_units(self) -> int:
        return int(self.units.shape[0])


@dataclass
class LoadReport:
    """What :func:`load_utterances` kept and skipped (``errors``: one ``file:line: problem`` each)."""

    kept: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)

    def add(self, message: str) -> None:
        self.skipped += 1
        self.errors.append(message)


def repeat_codes(codes: np.ndarray, ratio: int, num_units: int) -> np.ndarray:
    """Low-rate codes ``(K,)`` → one per unit ``(num_units,)``: repeat ×ratio, pad with the last
    code, cut (numpy twin of :func:`spiritlm.vocoder.model.upsample_codes`)."""
    up = np.repeat(np.asarray(codes, dtype=np.int64), ratio)
    if len(up) < num_units:
        up = np.concatenate([up, np.full(num_units - len(up), up[-1], dtype=np.int64)])
    return up[:num_units]


def parse_stream(value, name: str) -> np.ndarray:
    """A space-separated id string (or a list of ints) → int64 array; ValueError on bad input."""
    if isinstance(value, str):
        parts = value.split()
    elif isinstance(value, list):
        parts = value
    else:
        raise ValueError(f"'{name}' must be a space-separated string of ids, got {type(value).__name__}")
    if not parts:
        raise ValueError(f"'{name}' is empty")
    try:
        arr = np.array([int(p) for p in parts], dtype=np.int64)
    except (TypeError, ValueError):
        bad = next(p for p in parts if not str(p).lstrip("-").isdigit())
        raise ValueError(f"'{name}' has a non-integer id {str(bad)[:20]!r}") from None
    if (arr < 0).any():
        raise ValueError(f"'{name}' has a negative id {int(arr.min())}")
    return arr


def read_speakers(manifest: str) -> list[str]:
    """Sorted distinct speaker names of a manifest (``"default"`` for lines without one)."""
    from ..corpus.manifest import read_audio_manifest

    return sorted({it.speaker or "default" for it in read_audio_manifest(manifest)})


def load_utterances(
    manifest: str,
    units: str,
    *,
    splits: Sequence[str | None] | None = None,
    speakers: Sequence[str] | None = None,
    num_units: int | None = None,
    num_pitch: int | None = None,
    num_style: int | None = None,
    max_utts: int | None = None,
    check_every_line: bool = False,
) -> tuple[list[Utterance], LoadReport]:
    """Joins a manifest and a units JSONL (see the module docstring).

    Args:
        manifest: corpus manifest (JSONL).
        units: units JSONL (Meta's format).
        splits: keep manifest lines whose ``split`` is one of these (None in the list: lines
            without a split); None keeps every line.
        speakers: speaker names, index = id (default: :func:`read_speakers` of the manifest);
            a speaker not in the list is a skipped line.
        num_units, num_pitch, num_style: table sizes; a larger id is a skipped line. A stream
            with a size of 0 is ignored; None accepts any id.
        max_utts: stop after this many kept utterances.
        check_every_line: lines of the other splits are checked too (JSON, id, streams and
            table sizes, not their audio) and count as skipped when bad: the one pass over the
            file of ``spiritlm vocoder train``, which reads the validation split later, up to
            ``max_utts`` lines, and would otherwise drop its bad lines uncounted.

    Returns:
        ``(utterances, report)`` in units-file order.

    Raises:
        UserError: a missing file, a bad manifest line, or no usable line at all.
    """
    items = _manifest_items(manifest, units)
    speakers = list(speakers) if speakers is not None else sorted({it.speaker or "default" for it in items.values()})
    spk_index = {s: i for i, s in enumerate(speakers)}
    report = LoadReport()
    out: list[Utterance] = []
    seen: set[str] = set()
    seen_elsewhere: set[str] = set()  # ids of other splits' lines (check_every_line)
    for line in iter_unit_lines(units, check_streams=False):  # the streams are parsed and sized below
        where = f"{units}:{line.lineno}"
        rec = line.record
        if rec is None:  # not JSON, or not a JSON object
            report.add(f"{where}: not a JSON object ({line.error[:80]})")
            continue
        uid = str(rec.get("id", ""))
        it = items.get(uid)
        if it is None:
            report.add(f"{where}: id {uid!r} is not in {manifest}" if uid else f"{where}: no 'id'")
            continue
        wanted = splits is None or it.split in splits
        if not (wanted or check_every_line):
            continue
        if uid in (seen if wanted else seen_elsewhere):
            report.add(f"{where}: duplicate id {uid!r}")
            continue
        try:
            u, streams = _line_streams(rec, num_units, num_pitch, num_style)
            if wanted:  # other splits' lines (check_every_line) are checked, not loaded
                out.append(_utterance(uid, it, u, streams, spk_index, rec))
        except ValueError as exc:
            report.add(f"{where}: {exc}")
            continue
        if not wanted:
            seen_elsewhere.add(uid)
            continue
        seen.add(uid)
        report.kept += 1
        if max_utts and len(out) >= max_utts:
            break
    if not out:
        first = f" (first: {report.errors[0]})" if report.errors else ""
        raise UserError(f"{units}: no usable utterance{'' if splits is None else ' in split(s) ' + ', '.join(map(str, splits))}: "
                        f"{report.skipped} line(s) skipped{first} (--units / --manifest)")
    return out, report


def _manifest_items(manifest: str, units: str) -> dict:
    """``{id: item}`` of the manifest, both files checked to exist; a one-line UserError naming the flag."""
    from ..corpus.manifest import read_audio_manifest

    for path, flag in ((manifest, "--manifest"), (units, "--units")):
        if not os.path.isfile(path):
            raise UserError(f"{path}: file not found ({flag})")
    try:
        return {it.id: it for it in read_audio_manifest(manifest)}
    except ValueError as exc:
        raise UserError(f"{exc} (--manifest)") from None


def _line_streams(rec: dict, num_units: int | None, num_pitch: int | None, num_style: int | None) -> tuple[np.ndarray, dict]:
    """``(hubert units, {pitch/style: codes})`` of a units line, each id checked against its table
    size (0: stream ignored, None: any id); ValueError saying what is wrong."""
    u = parse_stream(rec.get("hubert", ""), "hubert")
    if num_units is not None and int(u.max()) >= num_units:
        raise ValueError(f"unit {int(u.max())} is beyond the vocoder's {num_units} units (--units / --preset)")
    streams = {}
    for name, size in (("pitch", num_pitch), ("style", num_style)):
        if size == 0:
            continue
        if name not in rec:
            if size is not None:
                raise ValueError(f"no '{name}' stream, but the vocoder has a {name} table")
            continue
        s = parse_stream(rec[name], name)
        if size is not None and int(s.max()) >= size:
            raise ValueError(f"{name} code {int(s.max())} is beyond the vocoder's {size} {name} codes (--units / --speech_tokenizer)")
        streams[name] = s
    return u, streams


def _utterance(uid: str, it, u: np.ndarray, streams: dict, spk_index: dict[str, int], rec: dict) -> Utterance:
    """The training utterance of a manifest item and its units: the audio cut to whole units, the
    pitch/style codes repeated to 25 Hz; ValueError for an unknown speaker, unreadable audio or
    units that do not fit the audio's length."""
    spk = it.speaker or "default"
    if spk not in spk_index:
        raise ValueError(f"speaker {spk!r} is not among the vocoder's speakers")
    try:
        wav = load_audio(it.audio)
    except AudioError as exc:
        raise ValueError(str(exc)) from None
    frames = len(wav) // UNIT_HOP
    if abs(frames - len(u)) > LENGTH_TOLERANCE:
        raise ValueError(f"{len(u)} units for {len(wav) / SAMPLE_RATE:.2f} s of audio (expected ~{frames} at 25 Hz): "
                         "were these units made from this manifest's audio by a 25 Hz tokenizer? (--units)")
    T = min(frames, len(u))
    if T < 1:
        raise ValueError("shorter than one unit")
    pitch = repeat_codes(streams["pitch"], PITCH_RATIO, T) if "pitch" in streams else None
    style = repeat_codes(streams["style"], STYLE_RATIO, T) if "style" in streams else None
    return Utterance(uid, wav[: T * UNIT_HOP].astype(np.float32), u[:T], pitch, style, spk_index[spk], it.split, rec)


def most_frequent_codes(utterances: Sequence[Utterance]) -> dict[str, int]:
    """``{"pitch": code, "style": code}``: the code most units of ``utterances`` carry (ties: the
    smaller code), for each stream they have. The vocoder fills a missing stream with it
    (``VocoderConfig.default_pitch`` / ``default_style``): an LM output without ``[PiN]``
    tokens is then voiced with the commonest pitch of the training speech."""
    out: dict[str, int] = {}
    for name in ("pitch", "style"):
        codes = [getattr(u, name) for u in utterances if getattr(u, name) is not None]
        if codes:
            out[name] = int(np.bincount(np.concatenate(codes)).argmax())
    return out


# ---------------------------------------------------------------------------------------------
# F0 of the training audio (targets and excitation of the harmonic source)
# ---------------------------------------------------------------------------------------------

#: F0 frames (200 Hz, the tokenizer's extractor) per unit
F0_PER_UNIT = UNIT_HOP // 80


def utterance_f0(wav: np.ndarray) -> np.ndarray:
    """F0 (Hz, 0 = unvoiced) of ``T * 640`` samples at 200 Hz, cut to ``T * 8`` frames: frame ``i``
    is centred on sample ``80 i`` (pyworld DIO + StoneMask, the tokenizer's default extractor)."""
    from ..tokenizers.f0 import extract_f0

    f0, _ = extract_f0(np.asarray(wav, dtype=np.float32))
    return f0[: (len(wav) // UNIT_HOP) * F0_PER_UNIT].astype(np.float32)


def attach_f0(utterances: Sequence[Utterance], cache: str | os.PathLike | None = None, progress: bool = False) -> int:
    """Sets ``utt.f0`` of every utterance (:func:`utterance_f0`); returns how many were computed.

    ``cache``: an ``.npz`` of ``id → f0`` read first (entries of the wrong length are recomputed)
    and rewritten atomically when anything was computed, so a resumed or repeated run does not
    pay for DIO again (~50x real time on one core: ~1.5 CPU minutes for the demo's 80 minutes).
    """
    known: dict[str, np.ndarray] = {}
    if cache is not None and os.path.isfile(cache):
        try:
            with np.load(cache) as z:
                known = {k: z[k] for k in z.files}
        except (OSError, ValueError):
            known = {}  # a damaged cache is recomputed
    computed = 0
    todo = utterances
    if progress:
        from tqdm.auto import tqdm

        todo = tqdm(utterances, desc="F0 of the training audio", unit="utt", dynamic_ncols=True)
    for u in todo:
        f0 = known.get(u.id)
        if f0 is None or f0.shape != (u.num_units * F0_PER_UNIT,):
            f0 = utterance_f0(u.wav)
            known[u.id] = f0
            computed += 1
        u.f0 = f0
    if cache is not None and computed:
        from spiritlm.atomic import atomic_path

        with atomic_path(cache, suffix=".npz") as tmp:  # np.savez appends .npz to other names
            np.savez(tmp, **known)
    return computed


# ---------------------------------------------------------------------------------------------
# Segments
# ---------------------------------------------------------------------------------------------


def cut_segment(utt: Utterance, start: int, segment_units: int) -> dict[str, np.ndarray | int]:
    """The aligned segment of ``segment_units`` units starting at unit ``start``.

    An utterance shorter than the segment is first repeated end to end (speech-resynthesis
    does the same), so every segment is full.

    Returns:
        ``{"audio": float32 (N * 640,), "units": (N,), "pitch": (N,) or None, "style": (N,) or
        None, "speaker": int, "dedup": (K,), "durations": (K,), "f0": float32 (N * 8,) or None}``
        with ``dedup``/``durations`` the segment's deduplicated units and run lengths (frames)
        and ``f0`` the segment's F0 frames (when the utterance has them).
    """
    T, N = utt.num_units, segment_units
    reps = -(-(start + N) // T)  # ceil
    def take(x):
        if x is None:
            return None
        x = np.tile(x, reps) if reps > 1 else x
        return x[start : start + N]

    audio = np.tile(utt.wav, reps) if reps > 1 else utt.wav
    f0 = None
    if utt.f0 is not None:
        f0 = (np.tile(utt.f0, reps) if reps > 1 else utt.f0)[start * F0_PER_UNIT : (start + N) * F0_PER_UNIT]
    units = take(utt.units)
    dedup, durs = deduplicate(units.tolist())
    return {
        "audio": audio[start * UNIT_HOP : (start + N) * UNIT_HOP],
        "units": units,
        "pitch": take(utt.pitch),
        "style": take(utt.style),
        "speaker": utt.speaker,
        "dedup": np.asarray(dedup, dtype=np.int64),
        "durations": np.asarray(durs, dtype=np.int64),
        "f0": f0,
    }


def random_segment(utt: Utterance, segment_units: int, rng: np.random.Generator) -> dict:
    """:func:`cut_segment` at a uniformly random start (0 when the utterance is too short)."""
    start = int(rng.integers(0, utt.num_units - segment_units + 1)) if utt.num_units >= segment_units else 0
    return cut_segment(utt, start, segment_units)


def collate(segments: Sequence[dict]) -> dict[str, torch.Tensor]:
    """Stacks segments into tensors.

    Returns ``audio [B, 1, N*640]``, ``units [B, N]``, ``pitch``/``style`` ``[B, N]`` (or absent),
    ``speaker [B]``, ``dedup [B, K]`` (zero-padded), ``durations [B, K]`` (0 on padding),
    ``dedup_lengths [B]`` and ``f0 [B, N*8]`` (Hz, when the segments have F0).
    """
    out: dict[str, torch.Tensor] = {
        "audio": torch.from_numpy(np.stack([s["audio"] for s in segments]))[:, None, :],
        "units": torch.from_numpy(np.stack([s["units"] for s in segments])),
        "speaker": torch.tensor([s["speaker"] for s in segments], dtype=torch.long),
    }
    for key in ("pitch", "style", "f0"):
        if segments[0].get(key) is not None:
            out[key] = torch.from_numpy(np.stack([s[key] for s in segments]))
    out["dedup"], out["dedup_lengths"] = pad_batch([s["dedup"] for s in segments], dtype=torch.long)
    out["durations"], _ = pad_batch([s["durations"] for s in segments], dtype=torch.long, width=out["dedup"].shape[1])
    return out


class SegmentSampler:
    """Endless batches of random segments: utterances in a fresh random order each epoch.

    The whole state is one numpy ``Generator`` plus the position in the current epoch's order;
    :meth:`state_dict` / :meth:`load_state_dict` (JSON-able) make a resumed run draw the same
    batches as an uninterrupted one.

    Args:
        utterances: training utterances.
        batch_size: segments per batch.
        segment_units: units per segment (``segment_units * 640`` samples).
        seed: seed of the generator.
        rank, world_size: under DDP each rank takes every ``world_size``-th utterance of the
            shared order (same seed on every rank), so ranks see different data.
    """

    def __init__(self, utterances: Sequence[Utterance], batch_size: int, segment_units: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1) -> None:
        if not utterances:
            raise ValueError("no utterances to sample from")
        self.utts = list(utterances)
        self.batch_size, self.segment_units = batch_size, segment_units
        self.rank, self.world_size = rank, world_size
        self.rng = np.random.default_rng(seed)
        self.order: list[int] = []
        self.pos = 0

    def _next_index(self) -> int:
        if self.pos >= len(self.order):
            self.order = self.rng.permutation(len(self.utts)).tolist()
            self.pos = 0
        i = self.order[self.pos]
        self.pos += 1
        return i

    def next_batch(self) -> dict[str, torch.Tensor]:
        """One collated batch (see :func:`collate`)."""
        segs = []
        for _ in range(self.batch_size):
            idx = [self._next_index() for _ in range(self.world_size)][self.rank]
            segs.append(random_segment(self.utts[idx], self.segment_units, self.rng))
        return collate(segs)

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state, "order": list(self.order), "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.order, self.pos = list(state["order"]), int(state["pos"])
