"""Picking the next token of every row at once: greedy arg-max or seeded sampling, no per-row loop.

Sampling follows Hugging Face's warper order (temperature, then top-k, then top-p) on a batch of
logits ``[B, V]``. Each row draws its uniform number from a counter-based hash of its own seed
and step (:func:`row_uniforms`), so a row samples the same tokens whatever the batch it is in,
and a batch needs no per-row ``torch.Generator`` (which ``torch.multinomial`` cannot vectorize).
The token is then the inverse CDF of the filtered distribution at that number.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["pick_next", "row_uniforms", "sample_next"]

_M32 = 0xFFFFFFFF


def _fmix32(h: Tensor) -> Tensor:
    """MurmurHash3's 32-bit finalizer on int64 tensors holding values in ``[0, 2**32)``.

    Products wrap modulo 2**64 in int64 and are masked back to 32 bits, so the result is the
    same on every device.
    """
    h = h ^ (h >> 16)
    h = (h * 0x85EBCA6B) & _M32
    h = h ^ (h >> 13)
    h = (h * 0xC2B2AE35) & _M32
    return h ^ (h >> 16)


def row_uniforms(seeds: Tensor, step: int) -> Tensor:
    """Uniform numbers in ``(0, 1)`` (float64, 53 random bits), one per row: a hash of
    ``(seeds[b], step)``. ``seeds`` ``[B]`` int64 (any value); same seed and step, same number."""
    lo, hi = seeds & _M32, (seeds >> 32) & _M32
    key = _fmix32(lo ^ _fmix32((hi + 0x9E3779B9) & _M32))
    s = torch.full_like(seeds, (step * 0x27D4EB2F + 0x165667B1) & _M32)
    a = _fmix32(key ^ _fmix32(s))
    b = _fmix32(a ^ 0x5BD1E995 ^ _fmix32((s + 0x68E31DA4) & _M32))
    bits = (a << 21) | (b >> 11)  # 53 bits
    return (bits.double() + 0.5) / float(2**53)


def pick_next(
    logits: Tensor,
    *,
    do_sample: bool,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seeds: Tensor | None = None,
    step: int = 0,
) -> Tensor:
    """Next token of every row of ``logits`` ``[B, V]`` (banned entries ``-inf``): ids ``[B]`` (long).

    Greedy (``do_sample=False``) takes the arg-max (the first one on ties, as ``torch.argmax`` and
    Hugging Face do). Sampling divides by ``temperature``, keeps the ``top_k`` best (0: all), then
    the smallest set of best tokens whose probability reaches ``top_p``, and draws with
    :func:`row_uniforms` of ``seeds`` ``[B]`` at ``step``.
    """
    if not do_sample:
        return torch.argmax(logits, dim=-1)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 when sampling, got {temperature}")
    if seeds is None:
        raise ValueError("sampling needs one seed per row")
    logits = logits.float() / temperature
    V = logits.size(-1)
    if top_k and top_k < V:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=False)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        remove = cum <= 1 - top_p
        remove[:, -1] = False  # always keep the best token
        logits = logits.masked_fill(torch.zeros_like(remove).scatter(1, order, remove), float("-inf"))
    cdf = logits.softmax(-1).double().cumsum(-1)  # [B, V]
    u = row_uniforms(seeds.to(logits.device), step) * cdf[:, -1]
    # the first token whose CDF exceeds u: zero-probability tokens (equal CDF) are never picked
    picks = torch.searchsorted(cdf, u.unsqueeze(1), right=True).squeeze(1)
    return picks.clamp_(max=V - 1)


def sample_next(
    logits: Tensor,
    *,
    do_sample: bool,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    step: int = 0,
) -> int:
    """:func:`pick_next` for one row of logits ``[V]``: the token id."""
    seeds = torch.tensor([seed], dtype=torch.long)
    return int(pick_next(logits.unsqueeze(0), do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p,
                         seeds=seeds, step=step)[0])
