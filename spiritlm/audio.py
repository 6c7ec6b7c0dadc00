"""Audio I/O: anything reasonable -> float32 mono waveform at a target rate; the one resampler and WAV writer.

Accepted sources: a path (``str`` / ``os.PathLike``), the bytes of an audio file, a numpy array
or a torch tensor (``(samples,)`` or ``(channels, samples)``; arrays need ``sample_rate`` unless
they already are at the target rate). Files are read with soundfile (WAV, FLAC, OGG, ...).

Every problem raises :class:`AudioError` with a message that names the source (the file path, or
``<bytes>`` / ``<array>``) and the problem, so batch jobs can log it, skip the item and go on.

Writing (:func:`write_audio`, :func:`save_wav`, :func:`to_pcm16`) and resampling (:func:`resample`)
happen here only (``tests/test_layout.py``), so two stages cannot render the same audio differently.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from math import gcd
from pathlib import Path
from typing import Union

import numpy as np
import soundfile as sf

from spiritlm.constants import SAMPLE_RATE

#: Shortest audio the speech tokenizers accept: 80 ms (the pitch tokenizer's 16x downsampling of
#: 5 ms frames needs 1280 samples at 16 kHz; HuBERT needs 400).
MIN_DURATION_S = 0.08

AudioSource = Union[str, os.PathLike, bytes, bytearray, np.ndarray, "torch.Tensor"]  # noqa: F821


class AudioError(ValueError):
    """Unusable audio input; the message names the source and the problem."""


@dataclass(frozen=True)
class AudioInfo:
    """What soundfile says about a file, without decoding it. Durations in seconds.

    ``path`` is the file's path (or the label of bytes); ``format`` / ``subtype`` are soundfile's
    names (``"WAV"`` / ``"PCM_16"``, ``"FLAC"``, ``"MP3"`` / ``"MPEG_LAYER_III"``, ...).
    """

    path: str
    sample_rate: int
    num_samples: int
    channels: int
    format: str = ""
    subtype: str = ""

    @property
    def duration(self) -> float:
        return self.num_samples / self.sample_rate


def audio_info(source: str | os.PathLike | bytes | bytearray, name: str | None = None) -> AudioInfo:
    """Reads the header of an audio file (a path, or the bytes of a file: an upload, a dataset
    row, labelled ``name`` or ``<bytes>``); raises :class:`AudioError` naming it if it is missing
    or unreadable. This is the only place that asks soundfile for a header (``tests/test_layout.py``).

    >>> buf = io.BytesIO(); sf.write(buf, np.zeros(1600, np.float32), 16000, format="WAV", subtype="PCM_16")
    >>> info = audio_info(buf.getvalue(), name="upload.wav")
    >>> info.duration, info.format, info.subtype
    (0.1, 'WAV', 'PCM_16')
    """
    if isinstance(source, (bytes, bytearray)):
        label, target = name or "<bytes>", io.BytesIO(source)
    else:
        label = target = str(source)
        if not os.path.exists(label):
            raise AudioError(f"{label}: file not found")
    try:
        info = sf.info(target)
    except Exception as exc:  # soundfile raises LibsndfileError / RuntimeError / TypeError
        raise AudioError(f"{label}: not a readable audio file ({_short(exc)})") from None
    return AudioInfo(label, int(info.samplerate), int(info.frames), int(info.channels), str(info.format), str(info.subtype))


def load_audio(
    source: AudioSource,
    target_rate: int = SAMPLE_RATE,
    sample_rate: int | None = None,
    channel: int | None = None,
    min_duration: float = MIN_DURATION_S,
    name: str | None = None,
) -> np.ndarray:
    """Loads audio as a float32 mono waveform at ``target_rate``.

    Args:
        source: path, file bytes, numpy array or torch tensor (``(samples,)`` or
            ``(channels, samples)``). Integer arrays are scaled to [-1, 1].
        target_rate: output sample rate in Hz.
        sample_rate: sample rate (Hz) of an array/tensor source; default ``target_rate``.
            Ignored for files, which carry their own.
        channel: for multi-channel input, the channel to keep; ``None`` averages the channels.
        min_duration: shortest accepted duration in seconds (after resampling).
        name: how to refer to the source in errors (default: the path, ``<bytes>`` or ``<array>``).

    Returns:
        ``np.ndarray`` of shape ``(samples,)``, dtype float32, at ``target_rate``.

    Raises:
        AudioError: missing file, not audio, empty, shorter than ``min_duration``, NaN/Inf
            samples, bad channel index, or an array of the wrong shape.
    """
    wav, rate, label = _read(source, sample_rate, target_rate, name)
    if wav.ndim == 2:
        if channel is None:
            wav = wav.mean(axis=0)
        elif not -wav.shape[0] <= channel < wav.shape[0]:
            raise AudioError(f"{label}: channel {channel} requested but the audio has {wav.shape[0]} channels")
        else:
            wav = wav[channel]
    check_waveform(wav, rate, label, min_duration)
    wav = resample(wav, rate, target_rate)  # never shortens: ceil(n * target / rate) samples
    return np.ascontiguousarray(wav, dtype=np.float32)


def check_waveform(wav: np.ndarray, sample_rate: int, label: str, min_duration: float = MIN_DURATION_S) -> None:
    """The checks every audio input passes, in ``tokenize`` and ``corpus check`` alike.

    Args:
        wav: samples, ``(samples,)`` (or ``(channels, samples)``).
        sample_rate: Hz.
        label: how errors name the source (the file path).
        min_duration: shortest accepted duration in seconds.

    Raises:
        AudioError: empty, NaN/Inf samples, or shorter than ``min_duration``.
    """
    if wav.size == 0:
        raise AudioError(f"{label}: empty audio (0 samples)")
    if not np.all(np.isfinite(wav)):
        bad = int(np.count_nonzero(~np.isfinite(wav)))
        raise AudioError(f"{label}: {bad} NaN/Inf samples")
    duration = wav.shape[-1] / sample_rate
    if duration < min_duration:
        raise AudioError(f"{label}: too short ({duration * 1000:.1f} ms < {min_duration * 1000:.0f} ms minimum)")


def validate_audio_file(path: str | os.PathLike, min_duration: float = MIN_DURATION_S) -> AudioInfo:
    """Decodes a file and applies :func:`check_waveform` (what ``load_audio`` accepts); returns its header.

    Raises:
        AudioError: missing, unreadable, empty, NaN/Inf samples or too short, naming the file.
    """
    wav, rate, label = _read(path, None, SAMPLE_RATE, None)
    check_waveform(wav, rate, label, min_duration)
    return audio_info(path)


def resample(wav: np.ndarray, orig_rate: int, target_rate: int, dtype: type | None = np.float32) -> np.ndarray:
    """Polyphase resampling along the last axis (scipy ``resample_poly``, Kaiser window).

    Exact rational ratio, deterministic, output length ``ceil(n * target / orig)``. The result is
    cast to ``dtype`` (``None``: scipy's own, float64 for float64 input, as the corpus renderers
    keep before :func:`to_pcm16`); equal rates return ``wav`` itself.
    """
    if orig_rate == target_rate:
        return wav
    if orig_rate <= 0 or target_rate <= 0:
        raise ValueError(f"resample: sample rates must be positive, got {orig_rate} -> {target_rate}")
    from scipy.signal import resample_poly  # imported here: scipy.signal takes seconds to import

    g = gcd(int(orig_rate), int(target_rate))
    out = resample_poly(wav, target_rate // g, orig_rate // g, axis=-1)
    return out if dtype is None else out.astype(dtype)


def to_pcm16(wav: np.ndarray) -> np.ndarray:
    """Float samples in [-1, 1] -> int16 (scaled by 32767, rounded half to even, clipped).

    >>> to_pcm16(np.array([0.0, 0.5, -1.0, 2.0])).tolist()
    [0, 16384, -32767, 32767]
    """
    return np.clip(np.round(wav * 32767.0), -32768, 32767).astype(np.int16)


def write_audio(target: str | os.PathLike | io.IOBase, wav: np.ndarray, sample_rate: int, subtype: str | None = None,
                format: str | None = None) -> None:
    """Writes ``wav`` as it is (no conversion: int16 samples stay int16) with soundfile: the one soundfile writer.

    Args:
        target: a path (its suffix gives the format unless ``format`` is given) or a binary file object.
        wav: ``(samples,)`` or ``(samples, channels)``.
        sample_rate: Hz.
        subtype: soundfile subtype (``PCM_16``, ``FLOAT``, …); None: the format's default.
        format: soundfile format (``WAV``, ``FLAC``, …); None: from the path's suffix.
    """
    sf.write(target if isinstance(target, io.IOBase) else str(target), wav, sample_rate, subtype=subtype, format=format)


def save_wav(path: str | os.PathLike, wav: np.ndarray, sample_rate: int, subtype: str = "PCM_16") -> None:
    """Writes a mono waveform (float in [-1, 1]) as a WAV file; parent folders are created."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_audio(path, np.asarray(wav, dtype=np.float32), sample_rate, subtype=subtype)


# ---------------------------------------------------------------------------------------------


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]


def _read(source, sample_rate, target_rate, name) -> tuple[np.ndarray, int, str]:
    """Returns ``(wav as float (channels, samples) or (samples,), rate, label)``."""
    if isinstance(source, (str, os.PathLike)):
        label = name or str(source)
        info = audio_info(source)  # missing / unreadable -> AudioError naming the file
        if info.num_samples == 0:
            raise AudioError(f"{label}: empty audio (0 samples)")
        try:
            data, rate = sf.read(str(source), dtype="float32", always_2d=True)
        except Exception as exc:
            raise AudioError(f"{label}: cannot decode audio ({_short(exc)})") from None
        return data.T if data.shape[1] > 1 else data[:, 0], int(rate), label

    if isinstance(source, (bytes, bytearray, memoryview)):
        label = name or "<bytes>"
        if len(source) == 0:
            raise AudioError(f"{label}: empty input (0 bytes)")
        try:
            data, rate = sf.read(io.BytesIO(bytes(source)), dtype="float32", always_2d=True)
        except Exception as exc:
            raise AudioError(f"{label}: not a readable audio file ({_short(exc)})") from None
        return data.T if data.shape[1] > 1 else data[:, 0], int(rate), label

    label = name or "<array>"
    if type(source).__module__.startswith("torch"):
        source = source.detach().cpu().numpy()
    if not isinstance(source, np.ndarray):
        raise AudioError(f"{label}: unsupported audio source of type {type(source).__name__}")
    arr = source
    if arr.ndim == 2 and 1 in arr.shape:
        arr = arr.reshape(-1)
    if arr.ndim not in (1, 2):
        raise AudioError(f"{label}: expected (samples,) or (channels, samples), got shape {arr.shape}")
    if np.issubdtype(arr.dtype, np.integer):
        arr = arr.astype(np.float32) / float(np.iinfo(arr.dtype).max + 1)
    elif np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float32, copy=False)
    else:
        raise AudioError(f"{label}: unsupported sample dtype {arr.dtype}")
    return arr, int(sample_rate or target_rate), label
