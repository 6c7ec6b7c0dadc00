"""Measures of resynthesised speech against the original: MCD, F0 RMSE, voicing, unit edit rate, durations.

All functions take 16 kHz float32 waveforms (``(samples,)``) or token sequences and return plain
floats or arrays; none of them loads a model. F0 comes from :func:`spiritlm.tokenizers.f0.extract_f0`
(WORLD DIO + StoneMask at 200 Hz by default), the same extractor the pitch tokenizer uses.

* :func:`mel_cepstral_distortion` (dB): WORLD's CheapTrick envelope coded into mel-cepstral
  coefficients (``pyworld.code_spectral_envelope``, 25 coefficients, c0 dropped), compared
  **frame by frame** (no DTW: a vocoder without duration prediction keeps the input's timing, so
  both signals have the same frames), ``10 / ln 10 * sqrt(2 * sum_d (c_d - c'_d)^2)`` averaged over
  the reference's speech frames (frame energy within 60 dB of its loudest frame).
* :func:`f0_rmse_cents` / :func:`voicing_error`: cents on frames voiced in both signals; the
  fraction of frames whose voiced/unvoiced decision differs.
* :func:`unit_edit_rate`: Levenshtein distance between unit sequences over the reference length
  (``jiwer`` with one unit per word), pooled over utterances.
* :func:`duration_frames` / :func:`duration_mae`: the duration predictor's ``log(1 + d)`` output
  rounded to frames as at inference, and its mean absolute error against true run lengths.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..tokenizers.f0 import F0_RATE, HOP, SAMPLE_RATE, F0Config, extract_f0
from ..tokenizers.metrics import CENTS_PER_LOG, f0_errors

#: mel-cepstral coefficients kept by :func:`mel_cepstra` (c0, the energy, is dropped by MCD)
N_MCEP = 25
#: ``10 / ln(10) * sqrt(2)``: the MCD constant (dB per unit of cepstral distance)
MCD_CONST = 10.0 / np.log(10.0) * np.sqrt(2.0)
#: frames quieter than this below the loudest frame are not counted by MCD / energy (dB)
SPEECH_FLOOR_DB = 60.0


def _crop(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = min(len(a), len(b))
    return np.asarray(a[:n], dtype=np.float64), np.asarray(b[:n], dtype=np.float64)


def frame_energy_db(wav: np.ndarray, hop: int = HOP, win: int = 400) -> np.ndarray:
    """Energy (dB, RMS of a ``win``-sample frame) at 200 Hz, frame ``i`` centred on sample ``hop * i``.

    Returns ``num_samples // hop + 1`` frames (as F0), so it lines up with :func:`extract_f0`.
    """
    x = np.asarray(wav, dtype=np.float64)
    n = len(x) // hop + 1
    padded = np.pad(x, (win // 2, win // 2))
    idx = np.arange(n)[:, None] * hop + np.arange(win)[None, :]
    frames = padded[np.minimum(idx, len(padded) - 1)]
    return 10.0 * np.log10(np.mean(frames**2, axis=1) + 1e-10)


def speech_frames(wav: np.ndarray) -> np.ndarray:
    """Boolean mask of the 200 Hz frames within :data:`SPEECH_FLOOR_DB` of the loudest frame."""
    e = frame_energy_db(wav)
    return e > e.max() - SPEECH_FLOOR_DB


def mel_cepstra(wav: np.ndarray, f0: np.ndarray | None = None, n_coeffs: int = N_MCEP) -> np.ndarray:
    """Mel-cepstral coefficients ``(frames, n_coeffs)`` at 200 Hz of a 16 kHz waveform.

    WORLD's CheapTrick spectral envelope (F0-adaptive window; F0 from :func:`extract_f0` unless
    given) coded with ``pyworld.code_spectral_envelope``.
    """
    from ..tokenizers.utils import import_pyworld

    pw = import_pyworld()
    x = np.ascontiguousarray(wav, dtype=np.float64)
    if f0 is None:
        f0 = extract_f0(x.astype(np.float32))[0]
    f0 = np.ascontiguousarray(f0, dtype=np.float64)
    t = np.arange(len(f0), dtype=np.float64) / F0_RATE
    sp = pw.cheaptrick(x, f0, t, SAMPLE_RATE)
    return pw.code_spectral_envelope(sp, SAMPLE_RATE, n_coeffs)


def mel_cepstral_distortion(ref: np.ndarray, hyp: np.ndarray) -> float:
    """Frame-aligned MCD in dB between two waveforms (cropped to the shorter one), c0 excluded,
    averaged over the reference's speech frames (see the module docstring)."""
    ref, hyp = _crop(ref, hyp)
    c_ref, c_hyp = mel_cepstra(ref), mel_cepstra(hyp)
    n = min(len(c_ref), len(c_hyp))
    d = MCD_CONST * np.sqrt(np.sum((c_ref[:n, 1:] - c_hyp[:n, 1:]) ** 2, axis=1))
    mask = speech_frames(ref)[:n]
    return float(d[mask].mean()) if mask.any() else float(d.mean())


def f0_and_voicing(ref: np.ndarray, hyp: np.ndarray, cfg: F0Config | None = None) -> dict[str, np.ndarray]:
    """Per-frame F0 errors of ``hyp`` against ``ref`` (cropped to the shorter signal).

    Returns ``{"cents": errors on frames voiced in both, "vuv": 0/1 mismatch per frame,
    "f0_ref", "f0_hyp"}`` (F0 in Hz at 200 Hz, 0 = unvoiced).
    """
    ref, hyp = _crop(ref, hyp)
    f_ref, v_ref = extract_f0(ref.astype(np.float32), cfg)
    f_hyp, v_hyp = extract_f0(hyp.astype(np.float32), cfg)
    cents, vuv = f0_errors(f_ref, v_ref, f_hyp, v_hyp)
    return {"cents": cents, "vuv": vuv, "f0_ref": f_ref, "f0_hyp": f_hyp}


def rmse(x: np.ndarray) -> float:
    """Root mean square of ``x`` (NaN for an empty array)."""
    x = np.asarray(x, dtype=np.float64)
    return float(np.sqrt(np.mean(x**2))) if x.size else float("nan")


def f0_rmse_cents(ref: np.ndarray, hyp: np.ndarray) -> float:
    """F0 RMSE in cents over frames voiced in both waveforms (NaN when there are none)."""
    return rmse(f0_and_voicing(ref, hyp)["cents"])


def voicing_error(ref: np.ndarray, hyp: np.ndarray) -> float:
    """Fraction of 200 Hz frames whose voicing decision differs between the two waveforms."""
    return float(f0_and_voicing(ref, hyp)["vuv"].mean())


def unit_edit_rate(refs: Sequence[Sequence[int]], hyps: Sequence[Sequence[int]]) -> float:
    """Pooled edit rate: total Levenshtein distance (substitutions + deletions + insertions)
    over the total reference length, one unit per token (:mod:`spiritlm.edit_distance`)."""
    from spiritlm.edit_distance import error_rate

    return error_rate([[int(u) for u in r] for r in refs], [[int(u) for u in h] for h in hyps], "token")


def duration_frames(log_dur: np.ndarray) -> np.ndarray:
    """Durations in frames from the predictor's ``log(1 + d)``: ``max(1, round(exp(x) - 1))``."""
    return np.maximum(1, np.round(np.exp(np.asarray(log_dur, dtype=np.float64)) - 1)).astype(np.int64)


def duration_mae(log_dur: np.ndarray, true_durations: np.ndarray) -> float:
    """Mean absolute error in frames of the rounded predicted durations against run lengths."""
    pred = duration_frames(log_dur)
    true = np.asarray(true_durations, dtype=np.int64)
    if pred.shape != true.shape:
        raise ValueError(f"{pred.shape} predicted durations for {true.shape} runs")
    return float(np.mean(np.abs(pred - true)))


def log_f0_correlation(f0_a: np.ndarray, f0_b: np.ndarray) -> tuple[float, int]:
    """Pearson correlation of log F0 over frames voiced in both contours (200 Hz, 0 = unvoiced).

    Returns ``(r, frames)``; ``r`` is NaN with fewer than 3 common voiced frames or a flat contour.
    """
    n = min(len(f0_a), len(f0_b))
    a, b = np.asarray(f0_a[:n], dtype=np.float64), np.asarray(f0_b[:n], dtype=np.float64)
    v = (a > 0) & (b > 0)
    if v.sum() < 3:
        return float("nan"), int(v.sum())
    la, lb = np.log(a[v]), np.log(b[v])
    if la.std() == 0 or lb.std() == 0:
        return float("nan"), int(v.sum())
    return float(np.corrcoef(la, lb)[0, 1]), int(v.sum())


def mean_log_f0(f0: np.ndarray) -> float:
    """Mean F0 over voiced frames, in cents above 55 Hz (NaN without voiced frames)."""
    f0 = np.asarray(f0, dtype=np.float64)
    v = f0 > 0
    return float(np.mean(CENTS_PER_LOG * np.log(f0[v] / 55.0))) if v.any() else float("nan")


def speech_energy_db(wav: np.ndarray) -> float:
    """Mean frame energy (dB) over the speech frames of a waveform (loudness, for style controls)."""
    e = frame_energy_db(wav)
    return float(e[e > e.max() - SPEECH_FLOOR_DB].mean())
