"""FFT (overlap-save) convolution of channels-last ``[B, C, 1, T]`` tensors: the CPU inference path of
the generator's large-kernel, many-channel residual-block convolutions.

A ``C_in → C_out`` convolution with kernel ``k`` and dilation ``d`` costs ``k · C_in · C_out``
multiply-adds per output step done directly. Here the zero-padded input is cut into blocks of ``N``
steps overlapping by ``span - 1`` (``span = d · (k - 1) + 1``, the dilated kernel's extent), each
block goes through ``rfft``, every frequency bin is one complex ``[blocks × C_in] @ [C_in × C_out]``
matmul with the kernel's spectrum (the dilated kernel zero-stuffed to ``N`` steps: dilation costs
nothing), and ``irfft`` gives back ``N - span + 1`` valid outputs per block: about
``4 · C_in · C_out · (N/2 + 1) / (N - span + 1)`` real multiply-adds per step plus the FFTs, against
``k · C_in · C_out``. On the CPU that is faster for undilated kernels of 11 at 64+ channels (1.2–1.7×
per layer inside the generator); elsewhere (dilated, smaller kernels, fewer channels: the per-bin
matmuls are too small or the spectra too large) the direct path stays (:func:`fft_block_size`; measured in vocoder/README.md
"Measured", ``benchmarks/bench_fftconv.py``).

Shapes: input ``x`` ``[B, C_in, 1, T]`` (channels-last memory, i.e. ``[B, T, C_in]``), weight
``[C_out, C_in, k]`` → spectrum ``[N/2 + 1, C_in, C_out]`` (complex64, :func:`weight_spectrum`),
output ``[B, C_out, 1, T]`` channels-last, zero padding ``d · (k - 1) / 2`` on both sides (odd
``k``), as ``nn.Conv1d(padding=d·(k-1)//2, dilation=d)``. Float32 rounding: the result differs from
the direct convolution by ~1e-6 of its scale (``tests/test_vocoder_generator.py``).

>>> w = torch.randn(4, 3, 5)
>>> x = torch.randn(2, 3, 1, 40).contiguous(memory_format=torch.channels_last)
>>> y = fft_conv(x, weight_spectrum(w, 2, 32), None, span=9, block=32)
>>> ref = torch.nn.functional.conv1d(x[:, :, 0], w, padding=4, dilation=2)
>>> y.shape, bool((y[:, :, 0] - ref).abs().max() < 1e-4)
(torch.Size([2, 4, 1, 40]), True)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["fft_block_size", "weight_spectrum", "fft_conv"]


def fft_block_size(channels_in: int, channels_out: int, kernel_size: int, dilation: int, length: int) -> int | None:
    """The FFT block size ``N`` for this convolution, or None where the direct convolution is faster.

    The rule measured inside the ``base`` generator on the 2-core AMD EPYC (Zen 4, 1 thread; the
    direct channels-last convolution runs at ~90–100 GFLOP/s; vocoder/README.md "Measured"):
    undilated kernels of 11 or more at 64+ channels (1.2–1.7× per layer). Dilated ones gain at most
    1.25× and only at 128 channels (their spectra are 2–4× larger), kernels of 7 nothing measurable,
    and below 64 channels the per-bin matmuls are too small: direct. ``N``: 64 (32 at 256+ channels,
    where the kernel spectra would outgrow the cache). The input must fill at least 8 blocks (256
    channels: 176 steps, 128 and 64: 432): the spectra are 3x the kernel's bytes (``N/2 + 1``
    complex bins against ``k`` taps), read once per call, so on the short inputs of a stream's
    pushes (or of a sub-second utterance) the direct convolution on its packed weight is faster
    (with the weights out of cache, 256 channels: 45 steps 1.1 vs 1.9 ms, 135 steps 2.4 vs 2.9 ms,
    500 steps 7.2 vs 5.2 ms; a stream of ``base`` in pushes of 5-25 frames costs ~4 ms less per
    push than with a 2-block floor; ``benchmarks/bench_stream_push.py``).
    """
    span = dilation * (kernel_size - 1) + 1
    c = min(channels_in, channels_out)
    if kernel_size < 11 or span > 16 or c < 64:
        return None
    n = 32 if c >= 256 else 64
    return n if length >= 8 * (n - span + 1) else None


def weight_spectrum(weight: Tensor, dilation: int, block: int) -> Tensor:
    """``[C_out, C_in, k]`` → ``[block/2 + 1, C_in, C_out]`` complex64: the conjugate spectrum of the
    dilated kernel zero-stuffed to ``block`` steps (conjugate: a convolution layer correlates),
    computed in float64."""
    c_out, c_in, k = weight.shape
    stuffed = weight.new_zeros((c_out, c_in, block), dtype=torch.float64)
    stuffed[:, :, : dilation * (k - 1) + 1 : dilation] = weight.detach()
    return torch.fft.rfft(stuffed, dim=-1).conj().permute(2, 1, 0).to(torch.complex64).contiguous()


def fft_conv(x: Tensor, spectrum: Tensor, bias: Tensor | None, span: int, block: int) -> Tensor:
    """The convolution of ``x`` ``[B, C_in, 1, T]`` (channels-last) with the kernel whose
    :func:`weight_spectrum` (for ``block``) is ``spectrum``, zero-padded by ``(span - 1) / 2`` on
    each side: ``[B, C_out, 1, T]`` channels-last."""
    b, c, _, t = x.shape
    pad = (span - 1) // 2
    hop = block - span + 1  # valid outputs per block
    nb = -(-t // hop)
    xt = x.permute(0, 2, 3, 1).reshape(b, t, c)  # a view of the channels-last memory
    xp = F.pad(xt, (0, 0, pad, nb * hop + span - 1 - pad - t))  # [B, nb·hop + span - 1, C_in]
    spec = torch.fft.rfft(xp.unfold(1, block, hop).contiguous(), dim=-1)  # [B, nb, C_in, bins]
    bins = spec.size(-1)
    y = torch.matmul(spec.permute(3, 0, 1, 2).reshape(bins, b * nb, c).contiguous(), spectrum)  # [bins, B·nb, C_out]
    c_out = y.size(-1)
    y = torch.fft.irfft(y.view(bins, b, nb, c_out).permute(1, 2, 3, 0).contiguous(), n=block, dim=-1)  # [B, nb, C_out, block]
    y = y[..., :hop].transpose(-1, -2)  # [B, nb, hop, C_out]
    out = y.contiguous() if bias is None else torch.add(y, bias, out=y.new_empty(y.shape))
    out = out.view(b, nb * hop, c_out)[:, :t]
    return out.reshape(b, t, 1, c_out).permute(0, 3, 2, 1).contiguous(memory_format=torch.channels_last)
