"""F0 and voicing at 200 Hz (hop 80 samples at 16 kHz), interpolation, per-speaker statistics.

Backends (``F0Config.backend``):

* ``pyworld-dio`` (default): WORLD's DIO followed by StoneMask refinement; ~50x faster than real
  time on one CPU core.
* ``pyworld-harvest``: WORLD's Harvest; slower, finds more voiced frames.
* ``torchcrepe``: CREPE (weights ship with torchcrepe), voicing from its periodicity; batched,
  use a GPU for speed.
* ``fcpe``: torchfcpe's bundled FCPE model (the weights ship in the wheel; default of Meta's
  released expressive tokenizer), with Meta's settings: ``decoder_mode="local_argmax"``,
  ``threshold=0.05``, ``f0_min=50``, ``f0_max=1100``, unvoiced frames interpolated, output
  resampled (nearest) to ``num_samples // 80 + 1`` frames; voicing = 1 - uv.
* ``pyaapt``: YAAPT from AMFM-decompy with pGSLM's / Meta's settings: the waveform cut to a
  multiple of 80 samples, peak-normalised to 0.95, zero-padded by 160 samples each side,
  ``frame_length=20`` ms, ``frame_space=5`` ms, ``nccf_thresh1=0.25``,
  ``tda_frame_length=25`` ms (F0 range: YAAPT's default 60-400 Hz). YAAPT gives one frame
  fewer than the other backends; the last one is repeated.

The short names ``dio``, ``harvest`` and ``crepe`` are accepted for the first three.

Every backend returns ``num_samples // 80 + 1`` frames: frame ``i`` is centred on sample
``80 i`` (time ``i / 200`` s). F0 is in Hz with 0 on unvoiced frames. With
``interpolated=True`` :func:`extract_f0_batch` returns instead the contour Meta's F0 extractors
hand to the pitch quantizer: unvoiced frames filled by the backend's own interpolation (FCPE's
at its 10 ms frames before resampling; pYAAPT's ``samp_values`` linearly interpolated over its
zeros, edges held, when more than one frame is non-zero; :func:`interpolate_f0` for the others).

Normalised log-F0 (what the pitch VQ-VAE sees): ``(log F0 - mean_speaker) / scale`` on the
interpolated contour, where ``mean_speaker`` is the mean log-F0 over a speaker's voiced frames
(from a stats file written by :func:`compute_speaker_stats`) or, for an unknown speaker, over
the utterance's own voiced frames.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import UserError
from ..constants import SAMPLE_RATE
from .utils import import_pyworld


class F0StatsError(UserError, ValueError):
    """An F0 statistics file that cannot be read (its message names the file)."""

HOP = 80
F0_RATE = SAMPLE_RATE / HOP  # 200 Hz

BACKENDS = ("pyworld-dio", "pyworld-harvest", "torchcrepe", "fcpe", "pyaapt")
ALIASES = {"dio": "pyworld-dio", "harvest": "pyworld-harvest", "crepe": "torchcrepe"}
# F0 search range per backend when F0Config leaves it unset (Hz): WORLD's floor, Meta's FCPE range
DEFAULT_RANGE = {"pyworld-dio": (71.0, 800.0), "pyworld-harvest": (71.0, 800.0), "torchcrepe": (71.0, 800.0), "fcpe": (50.0, 1100.0)}
FCPE_THRESHOLD = 0.05  # Meta's V/UV threshold of FCPE's decoder


@dataclass
class F0Config:
    """F0 extraction settings.

    Attributes:
        backend: ``pyworld-dio``, ``pyworld-harvest``, ``torchcrepe``, ``fcpe`` or ``pyaapt``
            (or ``dio``, ``harvest``, ``crepe``).
        f0_min: lowest F0 searched (Hz); None: the backend's default (71 for WORLD and
            torchcrepe, 50 for FCPE as Meta; pYAAPT always uses Meta's settings, 60).
        f0_max: highest F0 searched (Hz); None: 800, FCPE 1100 (pYAAPT: 400).
        crepe_model: ``tiny`` or ``full`` (torchcrepe).
        crepe_threshold: periodicity above which a torchcrepe frame is voiced.
        device: device of torchcrepe (``cpu``/``cuda``).
    """

    backend: str = "pyworld-dio"
    f0_min: float | None = None
    f0_max: float | None = None
    crepe_model: str = "tiny"
    crepe_threshold: float = 0.21
    device: str = "cpu"


def num_f0_frames(num_samples: int) -> int:
    """Frames at 200 Hz for ``num_samples`` samples at 16 kHz."""
    return int(num_samples) // HOP + 1


def extract_f0(wav: np.ndarray, cfg: F0Config | None = None) -> tuple[np.ndarray, np.ndarray]:
    """F0 of one 16 kHz waveform.

    Returns:
        ``(f0, vuv)``: float32 ``(frames,)`` in Hz (0 where unvoiced) and float32 ``(frames,)``
        voicing in {0, 1}, with ``frames = num_samples // 80 + 1``.
    """
    return extract_f0_batch([wav], cfg)[0]


def resolve_backend(name: str) -> str:
    """The canonical backend name of ``name`` (an alias such as ``dio`` included)."""
    b = ALIASES.get(name, name)
    if b not in BACKENDS:
        raise ValueError(f"unknown F0 backend {name!r} (choose from {', '.join(BACKENDS + tuple(ALIASES))})")
    return b


def f0_range(cfg: F0Config) -> tuple[float, float]:
    """``(f0_min, f0_max)`` in Hz, the backend's defaults where ``cfg`` leaves them unset."""
    lo, hi = DEFAULT_RANGE.get(resolve_backend(cfg.backend), (60.0, 400.0))
    return (lo if cfg.f0_min is None else float(cfg.f0_min), hi if cfg.f0_max is None else float(cfg.f0_max))


def extract_f0_batch(wavs: Sequence[np.ndarray], cfg: F0Config | None = None, interpolated: bool = False) -> list[tuple[np.ndarray, np.ndarray]]:
    """:func:`extract_f0` for several waveforms (torchcrepe runs them as one batch of frames).

    ``interpolated=True`` returns the backend's interpolated contour in place of F0 with zeros
    (see the module docstring); voicing is the same either way.
    """
    cfg = cfg or F0Config()
    backend = resolve_backend(cfg.backend)
    if backend == "torchcrepe":
        out = _crepe(wavs, cfg)
    elif backend == "fcpe":
        return _fcpe(wavs, cfg, interpolated)
    elif backend == "pyaapt":
        return _pyaapt(wavs, interpolated)
    else:
        out = _world(wavs, cfg, backend)
    return [(interpolate_f0(f), v) for f, v in out] if interpolated else out


def _world(wavs: Sequence[np.ndarray], cfg: F0Config, backend: str) -> list[tuple[np.ndarray, np.ndarray]]:
    pw = import_pyworld()
    lo, hi = f0_range(cfg)
    out = []
    for wav in wavs:
        x = np.asarray(wav, dtype=np.float64)
        n = num_f0_frames(len(x))
        if backend == "pyworld-dio":
            f0, t = pw.dio(x, SAMPLE_RATE, f0_floor=lo, f0_ceil=hi, frame_period=1000 * HOP / SAMPLE_RATE)
            f0 = pw.stonemask(x, f0, t, SAMPLE_RATE)
        else:
            f0, t = pw.harvest(x, SAMPLE_RATE, f0_floor=lo, f0_ceil=hi, frame_period=1000 * HOP / SAMPLE_RATE)
        f0 = _fit(f0.astype(np.float32), n)
        out.append((f0, (f0 > 0).astype(np.float32)))
    return out


_FCPE_MODELS: dict[str, object] = {}


def fcpe_model(device: str = "cpu"):
    """torchfcpe's bundled model on ``device``, loaded once per process (torch >= 2.6 reads it
    with ``weights_only=True``, torch's default)."""
    key = str(device)
    if key not in _FCPE_MODELS:
        from torchfcpe import spawn_bundled_infer_model

        with contextlib.redirect_stdout(io.StringIO()):  # torchfcpe prints its loading steps
            _FCPE_MODELS[key] = spawn_bundled_infer_model(device=key)
    return _FCPE_MODELS[key]


def _fcpe(wavs: Sequence[np.ndarray], cfg: F0Config, interpolated: bool) -> list[tuple[np.ndarray, np.ndarray]]:
    """FCPE with the post-processing of torchfcpe's ``infer`` (uv = F0 below ``f0_min``, uv
    frames interpolated, F0 capped at ``f0_max``, nearest resampling to 200 Hz) done once for both
    outputs: at voiced frames the interpolated contour is the raw F0."""
    import torch
    import torch.nn.functional as F
    from torchfcpe.torch_interp import batch_interp_with_replacement_detach

    model = fcpe_model(cfg.device)
    lo, hi = f0_range(cfg)
    out = []
    for wav in wavs:  # one at a time, as Meta (FCPE pads a batch to its longest waveform)
        x = torch.as_tensor(np.asarray(wav, dtype=np.float32))[None, :, None].to(cfg.device)
        n = num_f0_frames(x.shape[1])
        with torch.inference_mode():
            f0 = model(x, SAMPLE_RATE, "local_argmax", FCPE_THRESHOLD)[..., 0]  # (1, frames at 100 Hz)
            uv = f0 < lo
            if 0 < int(uv.sum()) < uv.numel():  # nothing to interpolate from (or to) otherwise
                f0 = batch_interp_with_replacement_detach(uv, f0)
            f0 = f0.clamp(max=hi)
            f0 = F.interpolate(f0[None], size=n, mode="nearest")[0, 0]
            vuv = 1 - F.interpolate(uv.float()[None], size=n, mode="nearest")[0, 0]
        f0, vuv = f0.float().cpu().numpy(), vuv.cpu().numpy().astype(np.float32)
        out.append(((f0 if interpolated and vuv.any() else f0 * vuv).astype(np.float32), vuv))
    return out


def _pyaapt(wavs: Sequence[np.ndarray], interpolated: bool) -> list[tuple[np.ndarray, np.ndarray]]:
    import amfm_decompy.basic_tools as basic
    import amfm_decompy.pYAAPT as pYAAPT

    out = []
    for wav in wavs:
        x = np.asarray(wav, dtype=np.float64)
        n = num_f0_frames(len(x))
        x = x[: len(x) // HOP * HOP]
        peak = np.max(np.abs(x)) if len(x) else 0.0
        if peak > 0:  # librosa.util.normalize (max-norm), as pGSLM
            x = x / peak
        x = np.pad(x * 0.95, (160, 160))  # half a 20 ms frame each side: frame i centred on sample 80 i
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # YAAPT divides by zero energy on silence (and then finds no voicing)
            pitch = pYAAPT.yaapt(basic.SignalObj(x, SAMPLE_RATE), frame_length=20.0, frame_space=1000 * HOP / SAMPLE_RATE,
                                 nccf_thresh1=0.25, tda_frame_length=25.0)
        vals = np.asarray(pitch.samp_values, dtype=np.float64)
        vuv = np.asarray(pitch.vuv, dtype=np.float32)
        nz = np.flatnonzero(vals != 0)
        if len(nz) > 1:  # pGSLM's interpolation: linear over zeros, edges held, only with > 1 anchor
            vals = np.interp(np.arange(len(vals)), nz, vals[nz])
        # YAAPT's samp_values and vuv disagree on a few frames (values on unvoiced frames, zeros on
        # voiced ones): Meta's quantizer sees the interpolated values and vuv; F0-with-zeros is
        # that contour on the voiced frames.
        f0 = vals if interpolated else vals * vuv
        out.append((_fit(f0.astype(np.float32), n), _fit(vuv, n)))
    return out


def _fit(x: np.ndarray, n: int) -> np.ndarray:
    """Crops or edge-pads a frame sequence to ``n`` frames."""
    if len(x) >= n:
        return x[:n]
    return np.pad(x, (0, n - len(x)), mode="edge" if len(x) else "constant")


def _crepe(wavs: Sequence[np.ndarray], cfg: F0Config) -> list[tuple[np.ndarray, np.ndarray]]:
    import torch
    import torchcrepe

    lo, hi = f0_range(cfg)
    out = []
    for wav in wavs:
        audio = torch.as_tensor(np.asarray(wav, dtype=np.float32))[None]
        pitch, periodicity = torchcrepe.predict(
            audio, SAMPLE_RATE, hop_length=HOP, fmin=lo, fmax=min(hi, 1900.0),
            model=cfg.crepe_model, return_periodicity=True, batch_size=1024, device=cfg.device, pad=True,
        )
        periodicity = torchcrepe.filter.median(periodicity, 3)
        n = num_f0_frames(audio.shape[-1])
        p = _fit(pitch[0].cpu().numpy().astype(np.float32), n)
        v = _fit((periodicity[0] > cfg.crepe_threshold).cpu().numpy().astype(np.float32), n)
        out.append((p * v, v))
    return out


def interpolate_f0(f0: np.ndarray) -> np.ndarray:
    """Linear interpolation of F0 over unvoiced (0) frames; edges take the nearest voiced value.

    An utterance without voiced frames stays all zeros.
    """
    f0 = np.asarray(f0, dtype=np.float32)
    voiced = np.nonzero(f0 > 0)[0]
    if len(voiced) == 0:
        return f0.copy()
    return np.interp(np.arange(len(f0)), voiced, f0[voiced]).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Speaker statistics
# ---------------------------------------------------------------------------------------------


@dataclass
class SpeakerStats:
    """log-F0 statistics: per speaker ``{"mean": m, "std": s, "frames": n}`` over voiced frames."""

    speakers: dict[str, dict[str, float]]
    global_mean: float
    global_std: float

    def mean_for(self, speaker: str | None, f0: np.ndarray | None = None) -> float:
        """Mean log-F0 of ``speaker``; an unknown speaker uses the utterance's voiced frames
        (``f0``), then the global mean."""
        if speaker is not None and speaker in self.speakers:
            return float(self.speakers[speaker]["mean"])
        if f0 is not None and np.any(f0 > 0):
            return float(np.mean(np.log(f0[f0 > 0])))
        return self.global_mean

    def save(self, path: str | os.PathLike) -> None:
        with open(path, "w") as f:
            json.dump({"speakers": self.speakers, "global_mean": self.global_mean, "global_std": self.global_std}, f, indent=1)

    @classmethod
    def load(cls, path: str | os.PathLike) -> SpeakerStats:
        try:
            with open(path) as f:
                d = json.load(f)
            return cls({str(k): dict(v) for k, v in d["speakers"].items()}, float(d["global_mean"]), float(d["global_std"]))
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: F0 stats file not found") from None
        except (KeyError, ValueError, TypeError) as exc:
            raise ValueError(f"{path}: not an F0 stats file ({exc})") from None


class _Moments:
    """Count, mean and sum of squared deviations of a stream of arrays (float64), merged array by
    array (Chan et al.'s pairwise update): statistics of a corpus without holding its frames."""

    def __init__(self) -> None:
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def add(self, v: np.ndarray) -> None:
        v = np.asarray(v, dtype=np.float64)
        if not len(v):
            return
        nb, mb = len(v), float(v.mean())
        m2b = float(((v - mb) ** 2).sum())
        n = self.n + nb
        delta = mb - self.mean
        self.mean += delta * nb / n
        self.m2 += m2b + delta * delta * self.n * nb / n
        self.n = n

    @property
    def std(self) -> float:
        return float(np.sqrt(self.m2 / self.n)) if self.n else 0.0


def compute_speaker_stats(items: Iterable[tuple[str, np.ndarray]]) -> SpeakerStats:
    """Statistics from ``(speaker, f0)`` pairs (F0 in Hz, 0 = unvoiced), read one utterance at a
    time (memory does not grow with the corpus).

    ``global_std`` is the std of speaker-centred voiced log-F0 (the scale of normalised F0).
    """
    logs: dict[str, _Moments] = {}
    for spk, f0 in items:
        f0 = np.asarray(f0)
        logs.setdefault(str(spk), _Moments()).add(np.log(f0[f0 > 0]))
    speakers = {spk: {"mean": m.mean, "std": m.std, "frames": int(m.n)} for spk, m in logs.items() if m.n}
    if not speakers:
        raise ValueError("no voiced frames: cannot compute F0 statistics")
    total = sum(m.n for m in logs.values())
    global_mean = sum(m.mean * m.n for m in logs.values() if m.n) / total
    centred_std = np.sqrt(sum(m.m2 for m in logs.values()) / total)  # each speaker's frames about its own mean
    return SpeakerStats(speakers, float(global_mean), float(max(centred_std, 1e-3)))


def meta_speaker_stats(items: Iterable[tuple[str, np.ndarray]]) -> dict[str, dict[str, float]]:
    """pGSLM's / Meta's per-speaker F0 statistics from ``(speaker, f0 Hz with 0 = unvoiced)``:
    ``{speaker: {"f0_mean", "f0_std", "logf0_mean", "logf0_std"}}`` over voiced frames (Hz and
    log-Hz), read one utterance at a time. Speakers without a voiced frame are left out."""
    hz: dict[str, _Moments] = {}
    logs: dict[str, _Moments] = {}
    for spk, f0 in items:
        f0 = np.asarray(f0, dtype=np.float64)
        v = f0[f0 > 0]
        hz.setdefault(str(spk), _Moments()).add(v)
        logs.setdefault(str(spk), _Moments()).add(np.log(v))
    return {spk: {"f0_mean": m.mean, "f0_std": m.std, "logf0_mean": logs[spk].mean, "logf0_std": logs[spk].std}
            for spk, m in hz.items() if m.n}


def save_meta_speaker_stats(path: str | os.PathLike, stats: dict[str, dict[str, float]]) -> None:
    """Writes Meta's ``speaker_stats`` file (``torch.save`` of a dict of floats, readable with
    ``weights_only=True``), atomically."""
    import torch

    from spiritlm.atomic import atomic_path

    with atomic_path(path) as tmp:
        torch.save({str(k): {n: float(x) for n, x in v.items()} for k, v in stats.items()}, tmp)


def load_meta_speaker_stats(path: str | os.PathLike) -> dict[str, float]:
    """Speaker -> mean F0 in Hz from Meta's ``speaker_stats`` file (``{speaker: {"f0_mean": ...}}``,
    read with ``weights_only=True``). Raises FileNotFoundError / ValueError naming the file."""
    import torch

    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: speaker stats file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise F0StatsError(f"{path}: cannot be read with torch.load(weights_only=True) ({str(exc).splitlines()[0]})") from None
    if not isinstance(obj, dict):
        raise F0StatsError(f"{path}: expected {{speaker: {{'f0_mean': ...}}}}, got {type(obj).__name__}")
    out = {}
    for spk, v in obj.items():
        try:
            out[str(spk)] = float(v["f0_mean"])
        except (KeyError, TypeError, ValueError, RuntimeError):
            raise F0StatsError(f"{path}: speaker {spk!r} has no numeric 'f0_mean'") from None
    return out


def normalise(f0: np.ndarray, vuv: np.ndarray, mean_log_f0: float, scale: float) -> np.ndarray:
    """VQ-VAE input ``(2, frames)`` float32: normalised interpolated log-F0 and voicing."""
    interp = interpolate_f0(f0)
    lf = np.where(interp > 0, (np.log(np.maximum(interp, 1e-3)) - mean_log_f0) / scale, 0.0)
    return np.stack([lf, vuv]).astype(np.float32)


def denormalise(x: np.ndarray, mean_log_f0: float, scale: float, vuv_threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`normalise` for a decoder output ``(2, frames)`` (channel 1: voicing
    probability). Returns ``(f0 Hz with 0 where unvoiced, vuv in {0, 1})``."""
    vuv = (x[1] > vuv_threshold).astype(np.float32)
    f0 = np.exp(x[0] * scale + mean_log_f0).astype(np.float32)
    return f0 * vuv, vuv
