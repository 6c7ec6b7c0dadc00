"""Winograd (Toom-Cook) convolution of channels-last ``[B, C, 1, T]`` tensors: the CPU inference path of
the generator's kernel-3 and kernel-7 residual-block convolutions at many channels, where the FFT
path (:mod:`~spiritlm.vocoder.fftconv`) does not pay.

``F(m, r)`` computes ``m`` outputs of a kernel-``r`` correlation from a tile of ``α = m + r - 1``
inputs with ``α`` multiplications instead of ``m · r``: the tile is evaluated at ``α`` points
(``Bᵀ``, ``α × α``), multiplied pointwise by the kernel evaluated at the same points (``G``,
``α × r``, done once per weight), and interpolated back (``Aᵀ``, ``m × α``). With ``C_in → C_out``
channels the pointwise product is one real ``[tiles × C_in] @ [C_in × C_out]`` matmul per point, so
a convolution costs ``α / m · C_in · C_out`` multiply-adds per output step instead of
``r · C_in · C_out``: ``F(6, 3)`` 1.33 against 3 (2.25× fewer), ``F(6, 7)`` 2 against 7 (3.5×
fewer), plus two small transforms. A dilated convolution runs per phase, as in :func:`fft_conv`.

Precision: the points' powers make the transforms' entries differ in size, so float32 rounding
grows with ``α``: ~2e-6 of a layer's output scale for ``F(6, 3)`` (``α = 8``), ~8e-6 for ``F(4,
7)`` (10) and ~1.3e-5 for ``F(6, 7)`` (12), against ~1.5e-6 for the direct convolution. Through
the whole ``base`` generator that is ≤ 2.4e-6 of audio at amplitude 0.17 (4 s and 9.1 s) and
4e-6 at 0.5 (``tests/test_vocoder_generator.py`` checks the full-size generator against
speechbrain within 1e-5). Kernels of 11 take the FFT path (an ``α = 16`` tile would lose more
precision than it gains speed).

Shapes: input ``x`` ``[B, C_in, 1, T]`` (channels-last memory), weight ``[C_out, C_in, r]`` →
transformed kernel ``[α, C_in, C_out]`` (:func:`kernel_transform`), output ``[B, C_out, 1, T]``
channels-last, zero padding ``d · (r - 1) / 2`` on both sides (odd ``r``), as
``nn.Conv1d(padding=d·(r-1)//2, dilation=d)``.

>>> w = torch.randn(4, 3, 7)
>>> x = torch.randn(2, 3, 1, 40).contiguous(memory_format=torch.channels_last)
>>> y = winograd_conv(x, kernel_transform(w, 4), None, kernel_size=7, dilation=3, tile=4)
>>> ref = torch.nn.functional.conv1d(x[:, :, 0], w, padding=9, dilation=3)
>>> y.shape, bool((y[:, :, 0] - ref).abs().max() < 1e-4)
(torch.Size([2, 4, 1, 40]), True)
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor

from .fftconv import phase_blocks, write_phases

__all__ = ["winograd_tile", "winograd_matrices", "kernel_transform", "winograd_conv"]

#: the finite evaluation points for each tile length ``α`` (plus the point at infinity). Small,
#: symmetric points keep the transforms' entries close in size; these had the lowest float32 error
#: among the sets tried (vocoder/README.md, "Winograd convolutions"). 4: ``F(2, 3)``; 8: ``F(6, 3)``,
#: ``F(2, 7)``; 10: ``F(4, 7)``; 12: ``F(6, 7)``.
POINTS: dict[int, tuple[float, ...]] = {
    4: (0.0, 1.0, -1.0),
    8: (0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5),
    10: (0.0, 1.0, -1.0, 0.5, -0.5, 1.5, -1.5, 0.75, -0.75),
    12: (0.0, 1.0, -1.0, 0.5, -0.5, 2.0, -2.0, 1.5, -1.5, 0.75, -0.75),
}


def winograd_tile(channels_in: int, channels_out: int, kernel_size: int, dilation: int, length: int) -> int | None:
    """The outputs per tile ``m`` of the Winograd path for this convolution, or None where another
    path is faster: ``F(6, 7)`` for kernels of 7 at 64+ channels, ``F(6, 3)`` for kernels of 3 at
    128+, any dilation. Measured inside the ``base`` generator (1 thread; ``benchmarks/bench_fftconv.py
    --in_generator`` per layer, ``--generator`` whole; vocoder/README.md "Winograd convolutions"):
    per layer, direct (or FFT) → Winograd, ms: kernel 7 at 256 channels 4.1–4.3 → 2.0–2.2, at 128
    4.1–4.2 (FFT 3.2–3.5) → 2.1–2.8, at 64 4.3–4.8 → 2.8–3.1; kernel 3 at 256 1.8–1.9 → 1.3–1.6,
    at 128 1.8–1.9 → 1.4–2.0. ``F(6, 7)`` is 1.2–1.6× faster than ``F(4, 7)`` in a loop (with which
    the 64-channel layers had lost); whole ``base`` generator, paired rounds against the FFT-only
    path: ``F(4, 7)`` from 128 channels 1.04×, ``F(6, 7)`` from 64 channels 1.10–1.12×. Left out: kernels of 3 at 64 channels and everything
    below (1.9–2.0 → 2.1–2.5 ms with ``F(6, 3)``: the ``[tiles × C] @ [C × C]`` matmuls are too small
    for the transforms around them), kernels of 11 (the FFT path is faster and more precise).
    ``length`` is not used: tiles are short, so a stream's pushes take the same path as whole
    utterances (125 steps at 256 channels, kernel 7: 1.6–1.85× in a loop, 1.25–1.33× with the
    weights out of cache as a push finds them; kernels of 3 there lose 0.1–0.16 ms cold, ~1 ms a
    push in all, left as they are)."""
    c = min(channels_in, channels_out)
    if kernel_size == 7 and c >= 64:
        return 6
    if kernel_size == 3 and c >= 128:
        return 6
    return None


@lru_cache(maxsize=None)
def winograd_matrices(tile: int, kernel_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(Aᵀ [m, α], G [α, r], Bᵀ [α, α])`` in float64 for ``F(m = tile, r = kernel_size)``, a
    correlation ``y_i = Σ_j g_j · d_{i+j}`` (what a convolution layer computes): ``y = Aᵀ ((G g) ⊙
    (Bᵀ d))``. Built from the Vandermonde matrices ``E_n`` (rows ``[1, p, …, p^{n-1}]`` for each
    point ``p``, ``[0, …, 0, 1]`` for infinity) of the linear convolution ``s = E_α⁻¹ ((E_m a) ⊙ (E_r
    g))``, transposed in ``a``: ``Aᵀ = E_mᵀ``, ``G = E_r``, ``Bᵀ = E_α⁻ᵀ``."""
    alpha = tile + kernel_size - 1
    points = torch.tensor(POINTS[alpha], dtype=torch.float64)

    def vandermonde(n: int) -> Tensor:
        e = torch.zeros(alpha, n, dtype=torch.float64)
        e[:-1] = points[:, None] ** torch.arange(n, dtype=torch.float64)
        e[-1, -1] = 1.0
        return e

    return vandermonde(tile).T.contiguous(), vandermonde(kernel_size), torch.linalg.inv(vandermonde(alpha)).T.contiguous()


@lru_cache(maxsize=None)
def _transforms(tile: int, kernel_size: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    """``(Aᵀ, Bᵀ)`` of :func:`winograd_matrices` in ``dtype`` on ``device``, made once (a conversion
    per call was ~2 ms of a 4 s ``base`` synthesis)."""
    a_t, _, b_t = winograd_matrices(tile, kernel_size)
    return a_t.to(device, dtype), b_t.to(device, dtype)


def kernel_transform(weight: Tensor, tile: int) -> Tensor:
    """``[C_out, C_in, r]`` → ``[α, C_in, C_out]`` float32: the kernel at each point (``G g``),
    computed in float64. A dilated layer uses the same transform (:func:`winograd_conv`)."""
    _, g, _ = winograd_matrices(tile, weight.size(-1))
    u = torch.einsum("ar,oir->aio", g.to(weight.device), weight.detach().to(torch.float64))
    return u.to(torch.float32).contiguous()


def winograd_conv(x: Tensor, transformed: Tensor, bias: Tensor | None, kernel_size: int, dilation: int, tile: int,
                  residual: Tensor | None = None) -> Tensor:
    """The convolution of ``x`` ``[B, C_in, 1, T]`` (channels-last) with the kernel whose
    :func:`kernel_transform` (for ``tile``) is ``transformed``, dilated by ``dilation`` and
    zero-padded by ``dilation · (kernel_size - 1) / 2`` on each side, plus ``residual`` (``[B, C_out,
    1, T]``, added in the pass that writes the output): ``[B, C_out, 1, T]`` channels-last.

    The bias is added at the point ``p = 1``, whose interpolation weight is 1 for every output of a
    tile: one pass over ``1/m`` of the output instead of a pass over all of it."""
    b, c, _, t = x.shape
    a_t, b_t = _transforms(tile, kernel_size, x.dtype, x.device)
    alpha = a_t.size(1)
    tiles, nt = phase_blocks(x, kernel_size, dilation, alpha, tile)  # [B, d, nt, C_in, α] (a view)
    rows = b * dilation * nt
    # Bᵀ d for every tile: [B, d, nt, α, C_in] → [α, rows, C_in] (a view the matmul reads as it is)
    v = torch.matmul(b_t, tiles.transpose(-1, -2)).view(rows, alpha, c).transpose(0, 1)
    m = torch.matmul(v, transformed)  # [α, rows, C_out]
    c_out = m.size(-1)
    if bias is not None:
        m[POINTS[alpha].index(1.0)].add_(bias)
    y = (a_t @ m.view(alpha, rows * c_out)).view(tile, b, dilation, nt, c_out)
    return write_phases(y.permute(1, 3, 0, 2, 4), t, residual)  # [B, nt, m, d, C_out]
