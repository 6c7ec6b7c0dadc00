"""FFT (overlap-save) convolution of channels-last ``[B, C, 1, T]`` tensors: the CPU inference path of
the generator's large-kernel, many-channel residual-block convolutions.

A ``C_in → C_out`` convolution with kernel ``k`` and dilation ``d`` costs ``k · C_in · C_out``
multiply-adds per output step done directly. A dilated convolution only ever combines input steps
of one phase (``p, p + d, p + 2d, …``), so it is ``d`` undilated convolutions of kernel ``k``, one
per phase, whose outputs interleave. Here each phase of the zero-padded input is cut into blocks
of ``N`` steps overlapping by ``k - 1``, every block goes through ``rfft``, every frequency bin is
one complex ``[blocks × C_in] @ [C_in × C_out]`` matmul with the undilated kernel's spectrum (the
phases' blocks are rows of the same matmul), and ``irfft`` gives back ``N - k + 1`` valid outputs
per block: about ``4 · C_in · C_out · (N/2 + 1) / (N - k + 1)`` real multiply-adds per step plus the
FFTs, against ``k · C_in · C_out``, whatever the dilation. On the CPU that is faster for kernels of
11 at 64+ channels and of 7 at 128 (1.2–1.9× per layer inside the generator); elsewhere (kernels
of 3, fewer channels: the per-bin matmuls are too small for the FFTs around them) the direct path
stays (:func:`fft_block_size`; measured in vocoder/README.md "Measured",
``benchmarks/bench_fftconv.py --in_generator``).

Shapes: input ``x`` ``[B, C_in, 1, T]`` (channels-last memory, i.e. ``[B, T, C_in]``), weight
``[C_out, C_in, k]`` → spectrum ``[N/2 + 1, C_in, C_out]`` (complex64, :func:`weight_spectrum`),
output ``[B, C_out, 1, T]`` channels-last, zero padding ``d · (k - 1) / 2`` on both sides (odd
``k``), as ``nn.Conv1d(padding=d·(k-1)//2, dilation=d)``. Float32 rounding: the result differs from
the direct convolution by ~1e-6 of its scale (``tests/test_vocoder_generator.py``).

>>> w = torch.randn(4, 3, 5)
>>> x = torch.randn(2, 3, 1, 40).contiguous(memory_format=torch.channels_last)
>>> y = fft_conv(x, weight_spectrum(w, 32), None, kernel_size=5, dilation=2, block=32)
>>> ref = torch.nn.functional.conv1d(x[:, :, 0], w, padding=4, dilation=2)
>>> y.shape, bool((y[:, :, 0] - ref).abs().max() < 1e-4)
(torch.Size([2, 4, 1, 40]), True)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["fft_block_size", "weight_spectrum", "fft_conv", "dense_time_slice", "phase_blocks", "write_phases"]


def dense_time_slice(y: Tensor) -> Tensor:
    """``y``, a time slice of a ``[1, C, 1, T]`` channels-last tensor, with the strides of a tensor of
    its own. The slice is one block of memory but keeps the ``H`` stride of the whole, which makes
    torch's elementwise kernels take their strided path (10× slower for a LeakyReLU)."""
    if y.dim() == 4:
        st, c = y.stride(), y.size(1)
        n = c * y.size(3)
        if st[1] == 1 and st[0] != n:
            y = y.as_strided(y.shape, (n, 1, n, c), y.storage_offset())
    return y


def fft_block_size(channels_in: int, channels_out: int, kernel_size: int, dilation: int, length: int) -> int | None:
    """The FFT block size ``N`` for this convolution, or None where the direct convolution is faster.

    The rule measured layer by layer inside the ``base`` generator (one 4 s utterance on the 2-core
    AMD EPYC, Zen 4, 1 thread; the direct channels-last convolution runs at ~90–100 GFLOP/s;
    ``benchmarks/bench_fftconv.py --in_generator``, vocoder/README.md "Measured"): kernels of 11 or
    more at 64+ channels, and of 7 at 128–255, any dilation (it runs per phase: :func:`fft_conv`).
    Per layer, direct → FFT: 256 channels, kernel 11: 6.8–7.5 → 4.1–4.6 ms; 128: kernel 11
    6.7–7.1 → 3.5–4.0, kernel 7 4.5–4.7 → 3.2–3.9; 64, kernel 11: 6.8–7.3 → 5.0–5.6. Left direct:
    kernels of 7 at 256+ channels (4.4 → 3.5–4.1 ms for a spectrum of 8.9 MB a layer, 3x the
    weight), kernels of 7 at 64 and everything below 64 channels (slower: the per-bin matmuls are
    too small for the FFTs and transposes around them), kernels of 3. ``N``: 32 at 256+ channels
    (where the kernel spectra would outgrow the cache), 64 below. The input must fill at least 8
    blocks (``length ≥ 8 · (N - k + 1)``; 256 channels, kernel 11: 176 steps, 128: 432): the
    spectra are 3x the kernel's bytes (``N/2 + 1`` complex bins against ``k`` taps), read once per
    call, so on the short inputs of a stream's pushes (or of a sub-second utterance) the direct
    convolution on its packed weight is faster (with the weights out of cache, 256 channels: 45
    steps 1.1 vs 1.9 ms, 135 steps 2.4 vs 2.9 ms, 500 steps 7.2 vs 5.2 ms;
    ``benchmarks/bench_stream_push.py``).
    """
    c = min(channels_in, channels_out)
    if c < 64 or kernel_size < (7 if 128 <= c < 256 else 11):
        return None
    n = 32 if c >= 256 else 64
    hop = n - kernel_size + 1
    if hop < n // 2:  # at least half of each block is output
        return None
    return n if length >= 8 * hop else None  # the phases' blocks together: ~length / hop


def weight_spectrum(weight: Tensor, block: int) -> Tensor:
    """``[C_out, C_in, k]`` → ``[block/2 + 1, C_in, C_out]`` complex64: the conjugate spectrum of the
    (undilated) kernel zero-padded to ``block`` steps (conjugate: a convolution layer correlates),
    computed in float64. A dilated layer uses the same spectrum (:func:`fft_conv`)."""
    c_out, c_in, k = weight.shape
    padded = weight.new_zeros((c_out, c_in, block), dtype=torch.float64)
    padded[:, :, :k] = weight.detach()
    return torch.fft.rfft(padded, dim=-1).conj().permute(2, 1, 0).to(torch.complex64).contiguous()


def fft_conv(x: Tensor, spectrum: Tensor, bias: Tensor | None, kernel_size: int, dilation: int, block: int,
             residual: Tensor | None = None) -> Tensor:
    """The convolution of ``x`` ``[B, C_in, 1, T]`` (channels-last) with the kernel whose
    :func:`weight_spectrum` (for ``block``) is ``spectrum``, dilated by ``dilation`` and zero-padded
    by ``dilation · (kernel_size - 1) / 2`` on each side, plus ``residual`` (``[B, C_out, 1, T]``,
    added in the pass that writes the output; the bias goes into each block's DC bin):
    ``[B, C_out, 1, T]`` channels-last.

    Dilation ``d``: the padded input's steps ``p, p + d, p + 2d, …`` (phase ``p``) only ever meet
    each other, so the ``d`` phases run as ``d`` more rows of an undilated convolution and the
    outputs are interleaved back: the blocks and the spectrum stay those of kernel ``k``."""
    b, c, _, t = x.shape
    k, d = kernel_size, dilation
    hop = block - k + 1  # valid outputs per block and phase
    blocks, nb = phase_blocks(x, k, d, block, hop)
    spec = torch.fft.rfft(blocks.contiguous(), dim=-1)  # [B, d, nb, C_in, bins]
    bins = spec.size(-1)
    rows = b * d * nb
    y = torch.matmul(spec.permute(4, 0, 1, 2, 3).reshape(bins, rows, c).contiguous(), spectrum)  # [bins, rows, C_out]
    if bias is not None:  # a constant over each block: its DC bin (irfft divides by the block's length)
        y[0].add_(bias * block)
    c_out = y.size(-1)
    y = torch.fft.irfft(y.permute(1, 2, 0).contiguous(), n=block, dim=-1)  # [rows, C_out, block]
    return write_phases(y.view(b, d, nb, c_out, block)[..., :hop].permute(0, 2, 4, 1, 3), t, residual)


def phase_blocks(x: Tensor, kernel_size: int, dilation: int, block: int, hop: int) -> tuple[Tensor, int]:
    """``x`` ``[B, C, 1, T]`` (channels-last), zero-padded by ``dilation · (kernel_size - 1) / 2`` each
    side (and at the end to whole blocks), split into its ``d`` phases (steps ``p, p + d, …``) and
    each phase into blocks of ``block`` steps starting every ``hop``: a view ``[B, d, nb, C, block]``
    and ``nb``, the blocks per phase; block ``j`` of phase ``p`` gives outputs ``(j·hop + i)·d + p``,
    ``i < hop``, of a kernel spanning ``block - hop + 1`` taps. Shared by the FFT and Winograd paths
    (:mod:`~spiritlm.vocoder.winograd`)."""
    b, c, _, t = x.shape
    d = dilation
    pad = d * (kernel_size - 1) // 2
    tq = -(-t // d)  # outputs per phase
    nb = -(-tq // hop)
    length = (nb * hop + block - hop) * d  # padded input, a whole number of phases
    xt = x.permute(0, 2, 3, 1).reshape(b, t, c)  # a view of the channels-last memory
    xp = F.pad(xt, (0, 0, pad, length - pad - t))  # [B, length, C]
    phases = xp.view(b, length // d, d, c).transpose(1, 2)  # [B, d, length / d, C] (a view)
    return phases.unfold(2, block, hop), nb


def write_phases(y: Tensor, t: int, residual: Tensor | None = None) -> Tensor:
    """The outputs ``y`` ``[B, nb, hop, d, C_out]`` (any strides; step ``(j·hop + i)·d + p`` at
    ``[:, j, i, p]``) written in one pass (plus ``residual`` ``[B, C_out, 1, t]``, channels-last) into a
    channels-last ``[B, C_out, 1, t]`` output: an output of ``nb·hop·d ≥ t`` steps cut to ``t``."""
    b, nb, hop, d, c_out = y.shape
    full = torch.empty((b, c_out, 1, nb * hop * d), dtype=y.dtype, device=y.device, memory_format=torch.channels_last)
    flat = full.permute(0, 2, 3, 1).view(b, nb * hop * d, c_out)
    if residual is None:
        flat.view(b, nb, hop, d, c_out).copy_(y)
    else:  # the blocks wholly inside t at once, the last one or two (past t) apart: no padded copy of the residual
        res = residual.permute(0, 2, 3, 1).reshape(b, t, c_out)
        inner = t // (hop * d)
        head = inner * hop * d
        torch.add(y[:, :inner], res[:, :head].view(b, inner, hop, d, c_out), out=flat[:, :head].view(b, inner, hop, d, c_out))
        if head < t:
            torch.add(y[:, inner:].reshape(b, -1, c_out)[:, : t - head], res[:, head:], out=flat[:, head:t])
    if b > 1:
        return full[..., :t].contiguous(memory_format=torch.channels_last)
    return dense_time_slice(full[..., :t])
