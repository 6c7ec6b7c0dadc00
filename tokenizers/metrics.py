"""Quality measures of discrete speech tokens.

* PNMI (phone-normalised mutual information, HuBERT paper): ``I(phone; unit) / H(phone)`` over
  frames, from the joint frame counts.
* Purity of a labelling: ``sum_u max_l count(l, u) / N`` — the frame accuracy of predicting each
  token's most frequent label (``phone_purity``, ``style_purity``).
* F0 reconstruction: RMSE in cents on voiced frames and the voicing error rate.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _joint(labels: Sequence, tokens: Sequence[int]) -> np.ndarray:
    labels = np.asarray(labels)
    tokens = np.asarray(tokens)
    if labels.shape != tokens.shape:
        raise ValueError(f"{labels.shape[0]} labels for {tokens.shape[0]} tokens")
    _, li = np.unique(labels, return_inverse=True)
    _, ti = np.unique(tokens, return_inverse=True)
    joint = np.zeros((li.max() + 1, ti.max() + 1), dtype=np.float64)
    np.add.at(joint, (li, ti), 1.0)
    return joint


def pnmi(labels: Sequence, tokens: Sequence[int]) -> float:
    """``I(label; token) / H(label)`` in [0, 1] over aligned frames."""
    p = _joint(labels, tokens)
    p /= p.sum()
    pl, pt = p.sum(1, keepdims=True), p.sum(0, keepdims=True)
    nz = p > 0
    mi = float((p[nz] * np.log(p[nz] / (pl @ pt)[nz])).sum())
    h = float(-(pl[pl > 0] * np.log(pl[pl > 0])).sum())
    return mi / h if h > 0 else 0.0


def purity(labels: Sequence, tokens: Sequence[int]) -> float:
    """Fraction of frames whose label is the most frequent label of their token."""
    j = _joint(labels, tokens)
    return float(j.max(0).sum() / j.sum())


def majority_rate(labels: Sequence) -> float:
    """Chance level of purity: the frequency of the most common label."""
    _, c = np.unique(np.asarray(labels), return_counts=True)
    return float(c.max() / c.sum())


def frame_labels(segments: Sequence[tuple[str, float, float]], num_frames: int, rate: float, offset: float, blank: str = "<sil>") -> list[str]:
    """Label of each frame from timed segments ``(label, start s, end s)``.

    Frame ``t`` is labelled by the segment containing time ``t / rate + offset`` (its centre),
    else ``blank``.
    """
    out = [blank] * num_frames
    segs = sorted(segments, key=lambda s: s[1])
    j = 0
    for t in range(num_frames):
        c = t / rate + offset
        while j < len(segs) and segs[j][2] <= c:
            j += 1
        if j < len(segs) and segs[j][1] <= c < segs[j][2]:
            out[t] = segs[j][0]
    return out


CENTS_PER_LOG = 1200.0 / np.log(2.0)


def f0_errors(f0_ref: np.ndarray, vuv_ref: np.ndarray, f0_hat: np.ndarray, vuv_hat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame errors: cents on frames voiced in the reference (and with a positive estimate)
    and voicing mismatches on all frames. Arrays are cropped to the shorter length."""
    n = min(len(f0_ref), len(f0_hat))
    f0_ref, vuv_ref, f0_hat, vuv_hat = f0_ref[:n], vuv_ref[:n], f0_hat[:n], vuv_hat[:n]
    v = (vuv_ref > 0.5) & (f0_ref > 0) & (f0_hat > 0)
    cents = CENTS_PER_LOG * (np.log(f0_hat[v]) - np.log(f0_ref[v]))
    return cents, ((vuv_ref > 0.5) != (vuv_hat > 0.5)).astype(np.float64)
