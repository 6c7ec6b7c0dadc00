"""Cutting long recordings into utterances of at most ``max_seconds``, at pauses.

* With word times (an imported alignment, or ``--aligner``: the whole transcript is force-aligned
  over emissions computed in windows, :func:`spiritlm.corpus.align.long_emission`), cuts fall in
  the gaps between words -- the longest pause in the second half of each window -- so every
  segment keeps whole words and the segments' words are the recording's words, in order.
* Without a transcript, a voice activity detector finds the pauses: ``silero`` (the
  ``silero-vad`` package ships its model: works offline) or ``energy`` (frame RMS against the
  recording's loud frames, the fallback). A stretch of speech longer than ``max_seconds`` with no
  pause is cut at its quietest frame (counted as ``forced_cuts``).

Segments are written as WAV files (the source's rate; 16-bit when the source is, float otherwise)
under ``OUT``'s folder in ``segments/``; recordings already short enough are kept as they are
and still point at the source audio. Times are seconds.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from jsonargparse.typing import NonNegativeFloat, PositiveFloat

from spiritlm.atomic import atomic_path
from spiritlm.constants import SAMPLE_RATE


@dataclass
class SegmentConfig:
    """How recordings are cut.

    Attributes:
        max_seconds: longest segment.
        vad: ``silero`` or ``energy`` (recordings without word times).
        min_pause: shortest silence the VAD reports as a pause, seconds.
        energy_floor_db: energy VAD: frames quieter than the recording's 95th-percentile frame
            by this many dB are silence.
    """

    # typed as `spiritlm corpus segment`'s flags (spiritlm.cli.flags_from): the parser refuses a bad value
    max_seconds: PositiveFloat = 30.0
    vad: Literal["silero", "energy"] = "silero"
    min_pause: NonNegativeFloat = 0.2
    energy_floor_db: PositiveFloat = 35.0


# ------------------------------------------------------------------------------------------------
# Voice activity
# ------------------------------------------------------------------------------------------------
_SILERO = {}


def silero_speech(wav: np.ndarray, sample_rate: int, min_pause: float = 0.2) -> list[tuple[float, float]]:
    """Speech regions ``[(start s, end s)]`` found by Silero VAD (8 or 16 kHz; other rates are resampled)."""
    import torch
    from silero_vad import get_speech_timestamps, load_silero_vad

    from spiritlm.audio import resample

    if "model" not in _SILERO:
        _SILERO["model"] = load_silero_vad()  # the TorchScript model inside the package: no download
    rate = sample_rate if sample_rate in (8000, 16000) else SAMPLE_RATE  # rate: silero-VAD takes 8 or 16 kHz
    x = resample(np.asarray(wav, dtype=np.float32), sample_rate, rate)
    ts = get_speech_timestamps(torch.from_numpy(np.ascontiguousarray(x)), _SILERO["model"], sampling_rate=rate,
                               min_silence_duration_ms=int(min_pause * 1000), speech_pad_ms=30)
    return [(t["start"] / rate, t["end"] / rate) for t in ts]


def energy_speech(wav: np.ndarray, sample_rate: int, min_pause: float = 0.2, floor_db: float = 35.0) -> list[tuple[float, float]]:
    """Speech regions from frame energy (10 ms hops, 30 ms windows): frames within ``floor_db`` of
    the loud frames (95th percentile) are speech; pauses shorter than ``min_pause`` are bridged."""
    hop, win = sample_rate // 100, sample_rate * 3 // 100
    if len(wav) < win:
        return [(0.0, len(wav) / sample_rate)] if np.abs(wav).max(initial=0) > 0 else []
    n = 1 + (len(wav) - win) // hop
    frames = np.lib.stride_tricks.sliding_window_view(wav, win)[::hop][:n]
    db = 10 * np.log10(np.mean(frames.astype(np.float64) ** 2, axis=1) + 1e-12)
    loud = np.percentile(db, 95)
    speech = db > loud - floor_db
    regions, start = [], None
    for i, s in enumerate(speech):
        if s and start is None:
            start = i
        elif not s and start is not None:
            regions.append([start * hop, i * hop + win])
            start = None
    if start is not None:
        regions.append([start * hop, len(wav)])
    merged: list[list[int]] = []
    for a, b in regions:
        if merged and a - merged[-1][1] < min_pause * sample_rate:
            merged[-1][1] = b
        else:
            merged.append([a, b])
    return [(a / sample_rate, min(b, len(wav)) / sample_rate) for a, b in merged]


def speech_regions(wav: np.ndarray, sample_rate: int, cfg: SegmentConfig) -> list[tuple[float, float]]:
    if cfg.vad == "silero":
        return silero_speech(wav, sample_rate, cfg.min_pause)
    if cfg.vad == "energy":
        return energy_speech(wav, sample_rate, cfg.min_pause, cfg.energy_floor_db)
    raise ValueError(f"--vad must be silero or energy, got {cfg.vad!r}")


# ------------------------------------------------------------------------------------------------
# Cut points
# ------------------------------------------------------------------------------------------------
def choose_cuts(gaps: Sequence[tuple[float, float]], duration: float, max_seconds: float) -> list[float] | None:
    """Cut times (seconds) so that every piece of ``[0, duration]`` lasts at most ``max_seconds``,
    each in the middle of one of ``gaps`` (``(start, end)`` pauses where a cut splits nothing).

    Each cut takes, among the gaps whose middle falls in the second half of the window the
    current piece may still grow into, the longest (the first half when the second has none).
    Returns None when some stretch longer than ``max_seconds`` has no gap.
    """
    cuts: list[float] = []
    cur = 0.0
    while duration - cur > max_seconds:
        m = next_cut(gaps, cur, max_seconds)
        if m is None:
            return None
        cuts.append(m)
        cur = m
    return cuts


def next_cut(gaps: Sequence[tuple[float, float]], cur: float, max_seconds: float) -> float | None:
    """The cut after ``cur`` (see :func:`choose_cuts`), or None when no gap lies within ``max_seconds``."""
    window = [((a + b) / 2, b - a) for a, b in gaps if cur < (a + b) / 2 <= cur + max_seconds]
    if not window:
        return None
    late = [w for w in window if w[0] >= cur + max_seconds / 2] or window
    return max(late, key=lambda x: (x[1], x[0]))[0]


def _quietest(wav: np.ndarray, sample_rate: int, a: float, b: float) -> float:
    """Time of the quietest 20 ms frame in ``[a, b]`` seconds."""
    hop = sample_rate // 50
    seg = wav[int(a * sample_rate) : int(b * sample_rate)]
    if len(seg) < 2 * hop:
        return (a + b) / 2
    e = np.convolve(seg.astype(np.float64) ** 2, np.ones(hop), mode="valid")[::hop // 2]
    return a + (int(np.argmin(e)) * (hop // 2) + hop / 2) / sample_rate


def vad_cuts(wav: np.ndarray, sample_rate: int, cfg: SegmentConfig) -> tuple[list[float], int]:
    """Cut times for a recording without word times: at pauses between VAD speech regions, or at the
    quietest frame of a pause-free stretch. Returns ``(cuts, forced cuts)``."""
    duration = len(wav) / sample_rate
    regions = speech_regions(wav, sample_rate, cfg)
    edges = [0.0] + [t for r in regions for t in r] + [duration]
    gaps = [(edges[i], edges[i + 1]) for i in range(0, len(edges) - 1, 2) if edges[i + 1] >= edges[i]]
    cuts: list[float] = []
    forced = 0
    cur = 0.0
    while duration - cur > cfg.max_seconds:
        m = next_cut(gaps, cur, cfg.max_seconds)
        if m is None:  # a stretch of speech longer than max_seconds: cut where it is quietest
            m = _quietest(wav, sample_rate, cur + cfg.max_seconds / 2, cur + cfg.max_seconds)
            forced += 1
        cuts.append(m)
        cur = m
    return cuts, forced


def word_gaps(words, duration: float) -> list[tuple[float, float]]:
    """The pauses between consecutive words (zero-length where they touch): places a cut splits no word."""
    return [(words[i].end, words[i + 1].start) for i in range(len(words) - 1)]


# ------------------------------------------------------------------------------------------------
# Manifests
# ------------------------------------------------------------------------------------------------
@dataclass
class SegmentReport:
    """What :func:`segment_manifest` did."""

    kept: int = 0
    cut: int = 0
    segments: int = 0
    forced_cuts: int = 0
    skipped: list[str] = field(default_factory=list)


def _pieces(utt, wav: np.ndarray, cuts: list[float]) -> list[tuple[float, float, list]]:
    from spiritlm.corpus.manifest import Word

    bounds = [0.0, *cuts, utt.duration]
    out = []
    for a, b in zip(bounds, bounds[1:]):
        words = [Word(w.word, round(max(0.0, w.start - a), 6), round(min(b, w.end) - a, 6))
                 for w in utt.words if w.start >= a - 1e-9 and w.end <= b + 1e-9 and not (w.start == w.end == b and b != utt.duration)]
        out.append((a, b, words))
    return out


def segment_utterance(utt, cfg: SegmentConfig, out_dir: str | os.PathLike, aligner=None) -> tuple[list, int]:
    """Cuts one utterance longer than ``cfg.max_seconds``; returns ``(new utterances, forced cuts)``.

    Raises:
        ValueError: it has a transcript but no word times and no ``aligner`` is given, a word
            is longer than ``max_seconds``, or the alignment fails.
    """
    from spiritlm.audio import audio_info, load_audio, resample, write_audio
    from spiritlm.corpus.manifest import Utterance, Word

    wav = load_audio(utt.audio, target_rate=utt.sample_rate)
    rate = utt.sample_rate
    forced = 0
    if not utt.words and (utt.text or "").strip():
        if aligner is None:
            raise ValueError(f"has a transcript but no word times: pass --aligner to cut it at word boundaries")
        from spiritlm.corpus.align import align_emission, long_emission, spell_words

        em = long_emission(aligner, resample(wav, rate, aligner.sample_rate))
        times, _ = align_emission(em, spell_words(utt.text, aligner), aligner)
        utt = Utterance(**{**utt.__dict__, "words": [Word(w.word, min(w.start, utt.duration), min(w.end, utt.duration)) for w in times]})
    if utt.words:
        cuts = choose_cuts(word_gaps(utt.words, utt.duration), utt.duration, cfg.max_seconds)
        if cuts is None:
            raise ValueError(f"no word boundary within every {cfg.max_seconds:g} s (--max_seconds)")
    else:
        cuts, forced = vad_cuts(wav, rate, cfg)
    subtype = audio_info(utt.audio).subtype
    subtype = "PCM_16" if subtype == "PCM_16" else "FLOAT"
    seg_dir = Path(out_dir) / "segments"
    seg_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for k, (a, b, words) in enumerate(_pieces(utt, wav, cuts)):
        i0, i1 = int(round(a * rate)), int(round(b * rate))
        sid = f"{utt.id}_{k:04d}"
        path = seg_dir / f"{sid}.wav"
        with atomic_path(path, suffix=".wav") as tmp:
            write_audio(tmp, wav[i0:i1], rate, subtype=subtype)
        n = i1 - i0
        words = [Word(w.word, w.start, min(w.end, n / rate)) for w in words]
        out.append(Utterance(
            id=sid, audio=str(path.resolve()), sample_rate=rate, duration=round(n / rate, 6), speaker=utt.speaker,
            style=utt.style, text=" ".join(w.word for w in words) if utt.words else "", words=words,
            sentiment=utt.sentiment, intent=utt.intent, split=utt.split,
            extra={**{k2: v for k2, v in utt.extra.items() if k2 not in ("align_score", "word_scores")},
                   "segment_of": {"id": utt.id, "start": round(i0 / rate, 6), "end": round(i1 / rate, 6)}},
        ))
    return out, forced


def segment_manifest(manifest: str, out: str, cfg: SegmentConfig, aligner=None, progress: bool = True) -> SegmentReport:
    """Cuts every utterance of ``manifest`` longer than ``cfg.max_seconds``; writes the manifest ``out``
    (short utterances unchanged, long ones replaced by their segments, in order) atomically;
    nothing when every utterance was skipped."""
    from tqdm import tqdm

    from spiritlm.audio import AudioError
    from spiritlm.corpus.manifest import line_numbers, read_manifest, write_manifest

    utts = read_manifest(manifest)
    lines = line_numbers(manifest)
    report = SegmentReport()
    result = []
    out_dir = os.path.dirname(os.path.abspath(out))
    for u in tqdm(utts, desc="segment", unit="utt", disable=not progress, mininterval=5):
        if u.duration <= cfg.max_seconds:
            result.append(u)
            report.kept += 1
            continue
        try:
            pieces, forced = segment_utterance(u, cfg, out_dir, aligner)
        except (ValueError, AudioError) as e:
            report.skipped.append(f"{manifest}:{lines.get(u.id, '?')} ({u.id}): {e}")
            continue
        result += pieces
        report.cut += 1
        report.segments += len(pieces)
        report.forced_cuts += forced
    if result:  # every recording skipped: no OUT, which would pass for a finished output on the rerun
        write_manifest(out, result)
    return report
