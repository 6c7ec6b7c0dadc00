"""The unit HiFi-GAN generator (``generator.HifiGANGenerator``, speechbrain's layout, behind embedding tables) and its duration predictor.

Input streams and their rates (16 kHz audio):

* HuBERT units at 25 Hz (``unit_hop`` = 640 samples), ``[B, T]`` long;
* pitch codes at 12.5 Hz, ``[B, Tp]``, repeated ×2 to the unit rate;
* style codes at 1 Hz, ``[B, Ts]``, repeated ×25;
* a speaker id (and, for Meta's base vocoder, a style id) per utterance, ``[B]``.

The embeddings are concatenated on channels in the order unit, pitch, style, speaker, style id,
and the generator (:mod:`.generator`: speechbrain's parameter layout, our forward) upsamples them
by 5·4·4·4·2 = 640 samples per unit. Every convolution pads with zeros as Meta's generator does
(speechbrain's ``Conv1d`` reflects, which changes the edges and fails on inputs shorter than the pad).

Deduplicated units (what the LM emits) are first given durations by a
:class:`DurationPredictor` trained on ``log(1 + frames)``; at inference a unit lasts
``clamp(round(exp(x) - 1), min=1)`` frames.

Optional (``config.harmonic_source``, on for ``tiny``): a :class:`HarmonicSource` predicts log
F0 and voicing at 200 Hz from the generator's input, makes a sum of sines at that F0 (neural
source-filter, as NSF-HiFiGAN) and adds it, strided down by a convolution, after every
upsampling layer, so the generator shapes a periodic excitation instead of having to invent one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..tensors import length_mask
from .config import F0_HOP, VocoderConfig
from .generator import LRELU_SLOPE, HifiGANGenerator

__all__ = [
    "DurationPredictor",
    "DurationWeights",
    "HarmonicSource",
    "sine_excitation",
    "excitation_phase",
    "UnitHifiGAN",
    "durations_from_log",
    "frames_from_log",
    "upsample_codes",
    "expand_by_durations",
]


# ---------------------------------------------------------------------------------------------
# Pure tensor helpers
# ---------------------------------------------------------------------------------------------


def upsample_codes(codes: Tensor, ratio: int, num_units: int) -> Tensor:
    """Repeats low-rate codes to the unit rate, pads with the last code, cuts to ``num_units``.

    Args:
        codes: ``[B, K]`` long (pitch at 12.5 Hz, style at 1 Hz), ``K >= 1``.
        ratio: units per code (2 for pitch, 25 for style).
        num_units: ``T``, the number of units.

    Returns:
        ``[B, T]`` long.

    >>> upsample_codes(torch.tensor([[3, 4]]), 2, 5).tolist()
    [[3, 3, 4, 4, 4]]
    >>> upsample_codes(torch.tensor([[3, 4, 5]]), 2, 3).tolist()
    [[3, 3, 4]]
    """
    if codes.dim() != 2 or codes.size(1) == 0:
        raise ValueError(f"codes must be [B, K] with K >= 1, got shape {tuple(codes.shape)}")
    up = codes.repeat_interleave(ratio, dim=1)
    if up.size(1) < num_units:
        pad = up[:, -1:].expand(-1, num_units - up.size(1))
        up = torch.cat([up, pad], dim=1)
    return up[:, :num_units]


def frames_from_log(log_durations: Iterable[float]) -> list[int]:
    """Frames per unit from predicted ``log(1 + frames)``: ``max(1, round(exp(x) - 1))``.

    One Python ``float`` (IEEE double) at a time, so a value's frames never depend on where it
    sits in a tensor (torch's vectorised ``exp`` and its scalar loop for a tensor's tail are
    different implementations): streaming (a few units per call) and whole synthesis (all of them)
    round the same log-durations to the same frames. ``round`` rounds halves to even, as
    ``torch.round`` and Meta's vocoder do.

    >>> frames_from_log([0.0, math.log(3.5), 5.0])
    [1, 2, 147]

    Raises:
        ValueError: a NaN log-duration (a broken checkpoint).
    """
    out = []
    for x in log_durations:
        if x != x:
            raise ValueError("the duration predictor gave NaN (a broken vocoder checkpoint?)")
        out.append(max(1, round(math.exp(min(x, 30.0)) - 1.0)))  # e^30 frames: past any use, short of overflow
    return out


def durations_from_log(log_durations: Tensor) -> Tensor:
    """Frames per unit (long, same shape and device) from predicted ``log(1 + frames)``:
    ``clamp(round(exp(x) - 1), min=1)``, element by element with :func:`frames_from_log`.

    >>> durations_from_log(torch.log1p(torch.tensor([0.0, 2.4, 2.5, 3.5, 7.0]))).tolist()
    [1, 2, 2, 4, 7]
    """
    frames = frames_from_log(log_durations.detach().reshape(-1).float().cpu().tolist())
    return torch.tensor(frames, dtype=torch.long, device=log_durations.device).reshape(log_durations.shape)


def expand_by_durations(x: Tensor, durations: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Repeats each time step of ``x`` by its duration (frames), per sequence.

    Args:
        x: ``[B, C, T]`` embeddings at one step per deduplicated unit.
        durations: ``[B, T]`` long, frames per unit (``>= 0``).
        lengths: ``[B]`` valid units per sequence (default: all ``T``); steps beyond are dropped.

    Returns:
        ``(y, frames)``: ``y`` ``[B, C, T']`` with ``T' = max(frames)``, right-padded with zeros,
        and ``frames`` ``[B]`` long, the expanded length of each sequence.

    >>> y, n = expand_by_durations(torch.tensor([[[1.0, 2.0, 9.0]]]), torch.tensor([[2, 1, 3]]), torch.tensor([2]))
    >>> y.tolist(), n.tolist()
    ([[[1.0, 1.0, 2.0]]], [3])
    """
    B, C, T = x.shape
    if durations.shape != (B, T):
        raise ValueError(f"durations shape {tuple(durations.shape)} does not match x {tuple(x.shape)}")
    if lengths is None:
        lengths = torch.full((B,), T, dtype=torch.long, device=x.device)
    durations = durations.long() * length_mask(lengths, T)
    frames = durations.sum(dim=1)
    out = x.new_zeros(B, C, int(frames.max().item()) if B else 0)
    for b in range(B):
        row = torch.repeat_interleave(x[b], durations[b], dim=1)
        out[b, :, : row.size(1)] = row
    return out, frames


# ---------------------------------------------------------------------------------------------
# Duration predictor
# ---------------------------------------------------------------------------------------------


class DurationPredictor(nn.Module):
    """Predicts ``log(1 + frames)`` of each deduplicated unit from its embedding.

    Conv1d (kernel 3, zero padding) + ReLU → LayerNorm → dropout, twice, then a linear layer to
    one value per unit (the variance predictor of FastSpeech 2 / speech-resynthesis).

    Args:
        in_channels: embedding width ``C``.
        hidden: channels of the two convolutions.
        kernel_size: odd kernel, in units.
        dropout: dropout probability after each layer norm (training only).

    >>> dp = DurationPredictor(16, 32)
    >>> dp(torch.randn(2, 16, 7)).shape
    torch.Size([2, 7])
    """

    def __init__(self, in_channels: int, hidden: int = 128, kernel_size: int = 3, dropout: float = 0.5) -> None:
        super().__init__()
        pad = (kernel_size - 1) // 2
        self.conv1 = nn.Conv1d(in_channels, hidden, kernel_size, padding=pad)
        self.norm1 = nn.LayerNorm(hidden)
        self.conv2 = nn.Conv1d(hidden, hidden, kernel_size, padding=pad)
        self.norm2 = nn.LayerNorm(hidden)
        self.proj = nn.Linear(hidden, 1)
        self.dropout = dropout

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """``x`` ``[B, C, T]`` → ``[B, T]`` log-durations.

        ``mask`` ``[B, T]`` (true = valid) zeroes padded steps before each convolution so that a
        padded batch gives the same values as one sequence at a time.
        """
        m = None if mask is None else mask[:, None, :].to(x.dtype)
        h = x if m is None else x * m
        h = torch.relu(self.conv1(h))
        h = F.dropout(self.norm1(h.transpose(1, 2)), self.dropout, self.training).transpose(1, 2)
        if m is not None:
            h = h * m
        h = torch.relu(self.conv2(h))
        h = F.dropout(self.norm2(h.transpose(1, 2)), self.dropout, self.training)
        return self.proj(h).squeeze(-1)

    # -- inference ----------------------------------------------------------------------------------
    #
    # Streaming predicts each unit's duration once ``2p`` more units are known (``p`` = (kernel-1)/2
    # per convolution), from a window of ``4p + 1`` units; whole synthesis predicts all of them at
    # once. Through ``forward`` the two differ in float rounding (the convolutions and layer norms
    # sum in an order that depends on the sequence length: ~95 % of the values differed in their
    # last bits on the ``base`` preset), and a duration is a rounding of ``exp(x) - 1``, so a unit
    # near a half frame could get one frame more in one than in the other. ``infer`` computes
    # every position with the same sequence of IEEE float32 operations whatever the window:
    # gathers, elementwise + - * / sqrt max (exactly rounded, so the same inputs give the same bits
    # in any tensor), and sums in a fixed order (``np.add.accumulate``, which is defined as the
    # left-to-right recurrence, or an explicit halving tree). Streamed durations are then the
    # whole utterance's, bit for bit, and the per-token cost is ~40 numpy calls on tiny arrays.

    _infer_cache: tuple | None = None

    def inference_weights(self, embedding: Tensor) -> "DurationWeights":
        """The float32 numpy weights :meth:`infer` reads, built from ``embedding`` (the unit
        table ``[V, C]``) and this module's parameters, cached until one of them changes (their
        storage, device, dtype or in-place version counter: an optimiser step, ``load_state_dict``,
        ``.to``). Edits through ``.data``, or of parameters created under ``inference_mode``,
        bypass the version counter: call ``clear_inference_cache()`` after those."""
        params = (embedding, self.conv1.weight, self.conv1.bias, self.norm1.weight, self.norm1.bias,
                  self.conv2.weight, self.conv2.bias, self.norm2.weight, self.norm2.bias, self.proj.weight, self.proj.bias)
        # (inference tensors, made under inference_mode, keep no version counter: storage only)
        key = tuple((p.data_ptr(), None if p.is_inference() else p._version, p.dtype, p.device, tuple(p.shape)) for p in params)
        if self._infer_cache is not None and self._infer_cache[0] == key:
            return self._infer_cache[1]
        w = DurationWeights.build(self, embedding)
        self._infer_cache = (key, w)
        return w

    def clear_inference_cache(self) -> None:
        """Forgets :meth:`inference_weights`' cache."""
        self._infer_cache = None

    @staticmethod
    def infer(w: "DurationWeights", ids: np.ndarray, chunk: int = 16) -> np.ndarray:
        """Log-durations of the positions of ``ids`` whose whole window is in ``ids``.

        Args:
            w: :meth:`inference_weights`.
            ids: ``[W]`` int64 unit ids; ``w.pad`` (= the table's size) marks "no unit" (the zero
                padding of an utterance's edges, or of a right-padded batch row).
            chunk: positions per numpy pass (bounds the ``[chunk, C, H]`` products).

        Returns:
            ``[W - 4p]`` float32: the value at ``ids[2p + i]``, read from ``ids[i : i + 4p + 1]``
            only, and bit-identical for any ``ids`` holding that window (values at ``pad``
            positions are meaningless). Equal to ``forward`` to float rounding (~1e-6).
        """
        q = 2 * w.p
        out = np.empty(max(0, len(ids) - 2 * q), dtype=np.float32)
        for start in range(0, out.size, chunk):
            stop = min(out.size, start + chunk)
            out[start:stop] = _infer_window(w, ids[start : stop + 2 * q])
        return out


@dataclass(frozen=True)
class DurationWeights:
    """A :class:`DurationPredictor`'s parameters as float32 numpy arrays for
    :meth:`DurationPredictor.infer` (sizes: ``V`` units, ``C`` embedding, ``H`` hidden, kernel ``K``).

    Attributes:
        taps: ``[V + 1, K, H]``: ``taps[v, k] = conv1.weight[:, :, k] @ embedding[v]``, so the
            first convolution is one row gather and ``K - 1`` adds (row ``V`` is zero: the padding).
        b1, g1, n1: conv1 bias, norm1 weight and bias ``[H]``; eps1: norm1's epsilon.
        w2: ``[K, H, H]`` = conv2.weight as ``[tap, in, out]``; b2, g2, n2, eps2: as layer 1.
        wp: ``[H]`` proj weight; bp: ``[1]`` its bias.
        p: padding of each convolution, ``(K - 1) // 2``; pad: ``V``, the id of "no unit".
    """

    taps: np.ndarray
    b1: np.ndarray
    g1: np.ndarray
    n1: np.ndarray
    eps1: np.float32
    w2: np.ndarray
    b2: np.ndarray
    g2: np.ndarray
    n2: np.ndarray
    eps2: np.float32
    wp: np.ndarray
    bp: np.ndarray
    p: int
    pad: int

    @staticmethod
    def build(dp: DurationPredictor, embedding: Tensor) -> "DurationWeights":
        def f32(t: Tensor) -> np.ndarray:
            return np.ascontiguousarray(t.detach().to("cpu", torch.float32).numpy())

        emb, w1 = f32(embedding), f32(dp.conv1.weight)  # [V, C], [H, C, K]
        V, K = emb.shape[0], w1.shape[2]
        if dp.conv2.kernel_size[0] != K:
            raise ValueError(f"the duration predictor's convolutions have kernels {K} and {dp.conv2.kernel_size[0]}")
        taps = np.zeros((V + 1, K, w1.shape[0]), dtype=np.float32)
        for k in range(K):
            taps[:V, k] = emb @ w1[:, :, k].T
        return DurationWeights(
            taps=taps, b1=f32(dp.conv1.bias), g1=f32(dp.norm1.weight), n1=f32(dp.norm1.bias), eps1=np.float32(dp.norm1.eps),
            w2=np.ascontiguousarray(f32(dp.conv2.weight).transpose(2, 1, 0)), b2=f32(dp.conv2.bias),
            g2=f32(dp.norm2.weight), n2=f32(dp.norm2.bias), eps2=np.float32(dp.norm2.eps),
            wp=f32(dp.proj.weight)[0], bp=f32(dp.proj.bias), p=(K - 1) // 2, pad=V,
        )


def _row_sum(x: np.ndarray) -> np.ndarray:
    """``[R, N]`` → ``[R]``: each row summed left to right in float32 (``accumulate`` is defined
    as that recurrence, so the bits do not depend on R or on the other rows)."""
    return np.add.accumulate(x, axis=1)[:, -1]


def _tree_sum(x: np.ndarray) -> np.ndarray:
    """``[R, N, H]`` → ``[R, H]``: sum over axis 1 by halving (first half + second half, an odd
    last row added to row 0), a fixed order done with elementwise adds over contiguous blocks:
    ~10x faster than a left-to-right ``accumulate`` over a middle axis."""
    n = x.shape[1]
    while n > 1:
        half = n // 2
        y = x[:, :half] + x[:, half : 2 * half]
        if n % 2:
            y[:, :1] += x[:, 2 * half :]
        x, n = y, half
    return x[:, 0]


def _layer_norm(x: np.ndarray, g: np.ndarray, b: np.ndarray, eps: np.float32) -> np.ndarray:
    """LayerNorm over the last axis of ``[R, H]`` (two passes, as torch: mean, then the mean square
    of the deviations)."""
    n = np.float32(x.shape[1])
    d = x - (_row_sum(x) / n)[:, None]
    return d / np.sqrt(_row_sum(d * d) / n + eps)[:, None] * g + b


def _infer_window(w: DurationWeights, ids: np.ndarray) -> np.ndarray:
    """:meth:`DurationPredictor.infer` on one window ``[W]`` → ``[W - 4p]``."""
    p, K = w.p, w.taps.shape[1]
    R1 = ids.size - 2 * p  # first layer's outputs: ids[p : W - p]
    t = w.taps[ids]  # [W, K, H]: each unit's product with each tap
    h = t[:R1, 0] + t[1 : 1 + R1, 1] if K > 1 else t[:R1, 0].copy()
    for k in range(2, K):
        h += t[k : k + R1, k]
    h += w.b1
    np.maximum(h, np.float32(0), out=h)
    h = _layer_norm(h, w.g1, w.n1, w.eps1)
    h *= (ids[p : p + R1] != w.pad)[:, None]  # zero padding of the second convolution (forward's mask)
    R2 = R1 - 2 * p
    # products [R2, H_in, H_out], summed over taps (in tap order) then inputs (_tree_sum)
    if R2 == 1 and K > 1:  # a streamed unit: one multiply for all taps (the same products, the same sums)
        t = h[:, :, None] * w.w2  # [K, H_in, H_out]
        s = t[:1] + t[1:2]
        for k in range(2, K):
            s += t[k : k + 1]
    else:
        s = h[:R2, :, None] * w.w2[0]
        for k in range(1, K):
            s += h[k : k + R2, :, None] * w.w2[k]
    s = _tree_sum(s)
    s += w.b2
    np.maximum(s, np.float32(0), out=s)
    s = _layer_norm(s, w.g2, w.n2, w.eps2)
    return _row_sum(s * w.wp) + w.bp


# ---------------------------------------------------------------------------------------------
# Harmonic source (neural source-filter)
# ---------------------------------------------------------------------------------------------


def sine_excitation(
    f0: Tensor, hop: int = F0_HOP, sample_rate: int = 16000, num_harmonics: int = 1, phase0: Tensor | None = None
) -> Tensor:
    """Sines at ``F0, 2·F0, … num_harmonics·F0`` at the sample rate, zero on unvoiced frames.

    Args:
        f0: ``[B, F]`` Hz per frame of ``hop`` samples (0 = unvoiced); each frame's value holds
            for its ``hop`` samples (no interpolation, so a right-padded row gives the samples of
            the row alone).
        hop: samples per frame (80 = 200 Hz at 16 kHz).
        sample_rate: Hz.
        num_harmonics: ``H``.
        phase0: ``[B]`` phase (cycles) at the first sample, default 0; streaming passes the
            phase the samples before this piece accumulated (:func:`excitation_phase`).

    Returns:
        ``[B, F * hop, H]`` float32 in [-1, 1]. The phase is the running sum of ``F0 / sample_rate``
        from ``phase0`` at the first sample (float64, so it stays exact over minutes); harmonics
        at or above Nyquist are zero.

    >>> x = sine_excitation(torch.full((1, 200), 100.0), num_harmonics=2)   # 1 s at 100 Hz
    >>> x.shape, round(float(x[0, 40, 0]), 4), round(abs(float(x[0, 40, 1])), 4)  # 1/4 period of 100 Hz
    (torch.Size([1, 16000, 2]), 1.0, 0.0)
    """
    f = f0.double().repeat_interleave(hop, dim=1)  # [B, N]
    phase = torch.cumsum(f / sample_rate, dim=1) - f / sample_rate  # 0 at the first sample
    if phase0 is not None:
        phase = phase + torch.remainder(phase0.double().to(f.device), 1.0)[:, None]
    k = torch.arange(1, num_harmonics + 1, dtype=torch.float64, device=f0.device)
    cycles = torch.remainder(phase[..., None] * k, 1.0)  # [B, N, H]
    audible = (f[..., None] * k < sample_rate / 2) & (f[..., None] > 0)
    return (torch.sin(2 * torch.pi * cycles) * audible).float()


def excitation_phase(f0: Tensor, hop: int = F0_HOP, sample_rate: int = 16000) -> Tensor:
    """The phase (cycles, modulo 1, float64 ``[B]``) that :func:`sine_excitation` reaches after
    the frames ``f0`` ``[B, F]`` (Hz): where the next piece of a stream starts.

    >>> float(excitation_phase(torch.tensor([[100.0, 50.0]])))   # 80 samples at 100 Hz + 80 at 50 Hz
    0.75
    """
    return torch.remainder((f0.double() * hop / sample_rate).sum(dim=1), 1.0)


class HarmonicSource(nn.Module):
    """F0 head and sine excitation of a neural source-filter vocoder.

    The head (Conv1d k=3 + LeakyReLU, twice, then a 1×1 Conv1d) reads the generator's input
    ``[B, C, T]`` at the unit rate and gives, for each of the ``S = unit_hop / 80`` F0 frames of a
    unit, ``ln F0`` (Hz) and a voicing logit: 200 Hz, the frames of the tokenizer's F0 extractor, so
    training compares them with the training audio's F0 frame by frame. The excitation is
    ``tanh(Linear(H sines at k·F0))`` (no bias, so unvoiced frames give exactly 0), amplitude 0.1
    per sine as in NSF.

    Args:
        in_channels: ``C``.
        hidden: channels of the two convolutions.
        frames_per_unit: ``S``.
        num_harmonics: ``H``.
        sample_rate: Hz.

    >>> src = HarmonicSource(16, 32, frames_per_unit=8, num_harmonics=4)
    >>> log_f0, logit = src.predict(torch.randn(2, 16, 5))
    >>> log_f0.shape, logit.shape, src.excitation(torch.exp(log_f0)).shape
    (torch.Size([2, 40]), torch.Size([2, 40]), torch.Size([2, 1, 3200]))
    """

    #: initial F0 of the head's output (Hz): its bias starts at ln(150), mid-range of speech
    INIT_F0 = 150.0
    SINE_AMP = 0.1

    def __init__(self, in_channels: int, hidden: int = 64, frames_per_unit: int = 8, num_harmonics: int = 8,
                 sample_rate: int = 16000) -> None:
        super().__init__()
        self.frames_per_unit, self.num_harmonics, self.sample_rate = frames_per_unit, num_harmonics, sample_rate
        self.conv1 = nn.Conv1d(in_channels, hidden, 3, padding=1)
        self.conv2 = nn.Conv1d(hidden, hidden, 3, padding=1)
        self.proj = nn.Conv1d(hidden, 2 * frames_per_unit, 1)
        with torch.no_grad():
            self.proj.bias[:frames_per_unit] = float(torch.log(torch.tensor(self.INIT_F0)))
        self.merge = nn.Linear(num_harmonics, 1, bias=False)

    def predict(self, x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``x`` ``[B, C, T]`` → ``(ln F0 [B, T*S], voicing logit [B, T*S])``.

        ``mask`` ``[B, T]`` (true = valid) zeroes padded units before each convolution (a padded
        batch gives each row's values alone).
        """
        m = None if mask is None else mask[:, None, :].to(x.dtype)
        h = x if m is None else x * m
        h = F.leaky_relu(self.conv1(h), LRELU_SLOPE)
        h = F.leaky_relu(self.conv2(h if m is None else h * m), LRELU_SLOPE)
        out = self.proj(h)  # [B, 2S, T]
        B, _, T = out.shape
        S = self.frames_per_unit
        log_f0 = out[:, :S].transpose(1, 2).reshape(B, T * S)
        logit = out[:, S:].transpose(1, 2).reshape(B, T * S)
        return log_f0, logit

    def f0_from_prediction(self, log_f0: Tensor, logit: Tensor) -> Tensor:
        """Hz per frame, 0 where the voicing logit is <= 0 (probability <= 0.5)."""
        return torch.exp(log_f0.clamp(max=float(torch.log(torch.tensor(self.sample_rate / 2.0))))) * (logit > 0)

    @property
    def context(self) -> int:
        """Units on each side that one F0 frame's prediction reads (the head's receptive field)."""
        return (self.conv1.kernel_size[0] - 1) // 2 + (self.conv2.kernel_size[0] - 1) // 2

    def excitation(self, f0: Tensor, phase0: Tensor | None = None) -> Tensor:
        """F0 ``[B, F]`` (Hz, 0 = unvoiced) → excitation ``[B, 1, F * 80]`` (``phase0``: see
        :func:`sine_excitation`)."""
        sines = sine_excitation(f0, F0_HOP, self.sample_rate, self.num_harmonics, phase0) * self.SINE_AMP
        return torch.tanh(self.merge(sines.to(self.merge.weight.dtype))).transpose(1, 2)


def _float32(x: Tensor):
    """A context without autocast on ``x``'s device: the harmonic source runs in float32."""
    return torch.autocast(device_type=x.device.type, enabled=False)


def _fit_length(x: Tensor, n: int) -> Tensor:
    """Cuts or right-pads (zeros) the last axis to ``n``."""
    return x[..., :n] if x.size(-1) >= n else F.pad(x, (0, n - x.size(-1)))


# ---------------------------------------------------------------------------------------------
# Generator
# ---------------------------------------------------------------------------------------------


class UnitHifiGAN(HifiGANGenerator):
    """HiFi-GAN's generator conditioned on units, pitch, style and speaker embeddings.

    The generator (:class:`~spiritlm.vocoder.generator.HifiGANGenerator`: speechbrain's
    ``conv_pre``, ``ups``, ``resblocks`` and ``conv_post`` layout, type-1 residual blocks,
    zero padding) plus ``unit_embedding``,
    ``pitch_embedding``, ``style_embedding``, ``speaker_embedding``, ``style_id_embedding``
    (absent tables are ``None``) and ``duration_predictor``; with ``config.harmonic_source`` also
    ``source`` (:class:`HarmonicSource`) and ``source_convs`` (one strided ``Conv1d(1, channels)``
    per upsampling layer; both ``None`` otherwise, so Meta's layout maps one to one).

    Args:
        config: the architecture.

    Example (one second = 25 units → 16000 samples)::

        >>> cfg = VocoderConfig.preset("tiny", num_pitch=8, num_style=4, num_speakers=2,
        ...                            upsample_initial_channel=32, embedding_dim=8)
        >>> voc = UnitHifiGAN(cfg)
        >>> units = torch.randint(0, 501, (2, 25))
        >>> pitch = torch.randint(0, 8, (2, 13))      # 12.5 Hz
        >>> style = torch.randint(0, 4, (2, 1))       # 1 Hz
        >>> voc.embed(units, pitch, style, speaker=torch.tensor([0, 1])).shape
        torch.Size([2, 32, 25])
        >>> voc(units, pitch, style, speaker=torch.tensor([0, 1])).shape
        torch.Size([2, 1, 16000])
        >>> voc.predict_durations(units).shape
        torch.Size([2, 25])
    """

    def __init__(self, config: VocoderConfig) -> None:
        config.validate()
        super().__init__(
            in_channels=config.in_channels,
            upsample_initial_channel=config.upsample_initial_channel,
            upsample_rates=config.upsample_rates,
            upsample_kernel_sizes=config.upsample_kernel_sizes,
            resblock_kernel_sizes=config.resblock_kernel_sizes,
            resblock_dilation_sizes=config.resblock_dilation_sizes,
        )
        self.config = config
        self._init_conv_weights()

        dim = config.embedding_dim
        self.unit_embedding = nn.Embedding(config.num_units, dim)
        self.pitch_embedding = nn.Embedding(config.num_pitch, dim) if config.num_pitch else None
        self.style_embedding = nn.Embedding(config.num_style, dim) if config.num_style else None
        self.speaker_embedding = nn.Embedding(config.num_speakers, dim) if config.num_speakers else None
        self.style_id_embedding = nn.Embedding(config.num_style_ids, dim) if config.num_style_ids else None
        self.duration_predictor = (
            DurationPredictor(dim, config.duration_hidden, config.duration_kernel, config.duration_dropout)
            if config.duration_predictor
            else None
        )
        self.source: HarmonicSource | None = None
        self.source_convs: nn.ModuleList | None = None
        if config.harmonic_source:
            self.source = HarmonicSource(config.in_channels, config.source_hidden, config.f0_frames_per_unit,
                                         config.source_harmonics, config.sample_rate)
            # NSF-HiFiGAN's injection: after upsampling layer i the signal runs at
            # sample_rate / prod(rates[i+1:]); a strided convolution brings the excitation there
            convs = []
            for i in range(len(config.upsample_rates)):
                stride = 1
                for r in config.upsample_rates[i + 1:]:
                    stride *= r
                ch = config.upsample_initial_channel // 2 ** (i + 1)
                convs.append(nn.Conv1d(1, ch, 2 * stride, stride, padding=stride // 2) if stride > 1 else nn.Conv1d(1, ch, 1))
            self.source_convs = nn.ModuleList(convs)

    @torch.no_grad()
    def _init_conv_weights(self, std: float = 0.01) -> None:
        """HiFi-GAN's initialisation: conv weights ~ N(0, 0.01) (set through the weight norm), and
        the convolutions' biases 0.

        With torch's default biases (uniform in ±1/sqrt(fan_in)) the untrained ``tiny`` generator
        puts out a DC of up to 0.02 (seeds 0–3: −0.020 … 0.010, 20–60× its AC), which the mel loss
        cannot see (its filters give 0 Hz no weight); with zero biases its DC is < 1e-4 (issue 17,
        vocoder/README.md "Silence"). Loaded checkpoints (ours, Meta's) replace all of this."""
        for conv in self.weight_norm_convs():
            # assigning a parametrized weight goes through weight norm's right_inverse
            conv.weight = torch.randn_like(conv.weight) * std
            if conv.bias is not None:
                conv.bias.zero_()

    # -- embeddings ------------------------------------------------------------------------------

    @property
    def hop(self) -> int:
        """Output samples per unit (640)."""
        return self.config.unit_hop

    def embed(
        self,
        units: Tensor,
        pitch: Tensor | None = None,
        style: Tensor | None = None,
        speaker: Tensor | None = None,
        style_id: Tensor | None = None,
        *,
        aligned: bool = False,
    ) -> Tensor:
        """The generator's input: concatenated embeddings ``[B, C, T]`` at the unit rate.

        Args:
            units: ``[B, T]`` long unit ids.
            pitch: ``[B, Tp]`` pitch codes at their own rate (required when the vocoder has a
                pitch table; ignored otherwise).
            style: ``[B, Ts]`` style codes at their own rate (likewise).
            speaker: ``[B]`` speaker ids (default 0 for every utterance).
            style_id: ``[B]`` style ids of a multistyle vocoder (default 0).
            aligned: ``pitch`` and ``style`` are already one code per unit (``[B, T]``), as for
                deduplicated units, instead of at 12.5 Hz / 1 Hz.

        ``C = embedding_dim * config.num_streams``.
        """
        if units.dim() != 2:
            raise ValueError(f"units must be [B, T], got shape {tuple(units.shape)}")
        B, T = units.shape
        parts = [self.unit_embedding(units)]  # each [B, T, D]
        for name, table, codes, ratio in (
            ("pitch", self.pitch_embedding, pitch, self.config.pitch_ratio),
            ("style", self.style_embedding, style, self.config.style_ratio),
        ):
            if table is None:
                continue
            if codes is None:
                raise ValueError(f"this vocoder has a {name} table: give {name} codes")
            codes = codes.to(units.device).long()
            if not aligned:
                codes = upsample_codes(codes, ratio, T)
            elif codes.shape != units.shape:
                raise ValueError(f"aligned {name} codes must have the units' shape {tuple(units.shape)}, got {tuple(codes.shape)}")
            parts.append(table(codes))
        for table, ids in ((self.speaker_embedding, speaker), (self.style_id_embedding, style_id)):
            if table is None:
                continue
            ids = torch.zeros(B, dtype=torch.long, device=units.device) if ids is None else ids.to(units.device).long().reshape(B)
            parts.append(table(ids)[:, None, :].expand(B, T, -1))
        return torch.cat(parts, dim=-1).transpose(1, 2)

    # -- waveform ----------------------------------------------------------------------------------

    def forward(  # type: ignore[override]
        self,
        units: Tensor,
        pitch: Tensor | None = None,
        style: Tensor | None = None,
        speaker: Tensor | None = None,
        style_id: Tensor | None = None,
    ) -> Tensor:
        """Frame-rate units (+ streams) → waveform ``[B, 1, T * 640]`` in [-1, 1].

        Arguments as :meth:`embed` (pitch and style at their own rates).
        """
        return self.vocode(self.embed(units, pitch, style, speaker, style_id))

    def vocode(self, x: Tensor, lengths: Tensor | None = None, f0: Tensor | None = None, phase0: Tensor | None = None) -> Tensor:
        """Embeddings ``[B, C, T]`` → waveform ``[B, 1, T * hop]``.

        Args:
            x: generator input at the unit rate.
            lengths: ``[B]`` valid steps per sequence for a right-padded batch. The input of
                every convolution is then zeroed beyond each sequence's end, so each row equals
                what the sequence alone gives (zero padding); samples beyond ``length * hop``
                are zero. ``None``: all rows are full.
            f0: ``[B, T * S]`` Hz at 200 Hz (0 = unvoiced) for the harmonic source (training
                feeds the audio's own F0); None: the source's prediction from ``x``. Only for a
                vocoder with ``config.harmonic_source``.
            phase0: ``[B]`` phase (cycles) of the source's sines at the first sample (default 0):
                a piece of a stream starts where the samples before it left the phase.
        """
        if self.source is not None:
            return self._vocode_with_source(x, lengths, f0, phase0)
        if f0 is not None or phase0 is not None:
            raise ValueError("f0 and phase0 are only used by a vocoder with a harmonic source (config.harmonic_source)")
        return super().forward(x, None if lengths is None else lengths.to(x.device).long())

    def _vocode_with_source(self, x: Tensor, lengths: Tensor | None, f0: Tensor | None, phase0: Tensor | None = None) -> Tensor:
        """:meth:`vocode` of a vocoder with a harmonic source: the excitation is added after every
        upsampling through ``source_convs``."""
        source, convs = self.source, self.source_convs
        assert source is not None and convs is not None
        B, _, T = x.shape
        S = self.config.f0_frames_per_unit
        if lengths is not None:
            lengths = lengths.to(x.device).long()
        if f0 is not None and f0.shape != (B, T * S):
            raise ValueError(f"f0 must be [B, T*{S}] = {(B, T * S)}, got {tuple(f0.shape)}")
        with _float32(x):  # bf16 would round ln F0 to ~3 % (50 cents) and drift the phase
            if f0 is None:
                unit_mask = None if lengths is None else length_mask(lengths, T)
                f0 = source.f0_from_prediction(*source.predict(x.to(source.proj.weight.dtype), unit_mask))
            f0 = f0.float() if lengths is None else f0.float() * length_mask(lengths * S, T * S)
            excitation = source.excitation(f0, phase0)  # [B, 1, T * hop], 0 beyond each row's end
        return super().forward(x, lengths, lambda i, n: _fit_length(convs[i](excitation), n))

    def predict_f0(self, x: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The harmonic source's ``(ln F0, voicing logit)``, each ``[B, T * S]`` at 200 Hz, for
        generator inputs ``x`` ``[B, C, T]`` (``lengths`` masks a right-padded batch)."""
        if self.source is None:
            raise ValueError("this vocoder has no harmonic source (config.harmonic_source=False)")
        mask = None if lengths is None else length_mask(lengths.to(x.device), x.size(-1))
        with _float32(x):
            return self.source.predict(x.to(self.source.proj.weight.dtype), mask)

    # -- receptive fields (streaming) -------------------------------------------------------------

    @property
    def context_frames(self) -> int:
        """Frames on each side of an output frame that the generator reads (its receptive field,
        rounded up; the harmonic source's own convolutions included, its F0 head not: see
        :attr:`HarmonicSource.context`). A window of frame-rate input with this many extra frames
        on each side gives the same audio in its middle as the whole utterance (zero padding)."""
        cfg = self.config
        span = (self.conv_pre.conv.kernel_size[0] - 1) / 2  # in frames
        rate = 1  # samples per frame at the current layer's input
        for u, k in zip(cfg.upsample_rates, cfg.upsample_kernel_sizes):
            span += math.ceil(k / u) / rate  # a transposed conv's output reads ceil(k/u) inputs each side
            rate *= u
            span += max(sum(d * (rk - 1) // 2 + (rk - 1) // 2 for d in dil)
                        for rk, dil in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes)) / rate
            if self.source_convs is not None:
                span += 2 / rate  # strided conv over the excitation: kernel 2 steps of this layer
        span += (self.conv_post.conv.kernel_size[0] - 1) / 2 / rate
        return math.ceil(span) + 1

    @property
    def duration_context(self) -> int:
        """Units on each side that one unit's predicted duration reads (0 without a predictor)."""
        dp = self.duration_predictor
        return 0 if dp is None else (dp.conv1.kernel_size[0] - 1) // 2 + (dp.conv2.kernel_size[0] - 1) // 2

    # -- durations ---------------------------------------------------------------------------------

    def predict_durations(self, units_dedup: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Predicted ``log(1 + frames)`` ``[B, T]`` for deduplicated units ``[B, T]``.

        Uses the unit embedding only (as Meta's vocoder does). ``lengths`` ``[B]`` masks a
        right-padded batch (values past a row's length are meaningless).

        With autograd recording or the predictor in training mode: the module's differentiable
        ``forward``. Otherwise (``torch.no_grad`` / ``inference_mode``, eval mode) on a CPU model:
        float32 :meth:`DurationPredictor.infer`, equal to ``forward`` to float rounding (~1e-6)
        and, position by position, bit-identical to what streaming computes from a window of
        ``2 * duration_context + 1`` units. On other devices ``forward`` (``infer`` is numpy,
        ~35 µs per unit for ``base`` on one CPU thread): streamed durations then equal these
        to float rounding, a unit within ~1e-6 of a half frame could round the other way.
        """
        dp = self.duration_predictor
        if dp is None:
            raise ValueError("this vocoder has no duration predictor (config.duration_predictor=False)")
        # training: the differentiable module. Off the CPU too: infer runs on the CPU at ~35 us
        # per unit (base), which would rival a GPU's whole synthesis of a large batch
        if dp.training or torch.is_grad_enabled() or self.unit_embedding.weight.device.type != "cpu":
            x = self.unit_embedding(units_dedup).transpose(1, 2)
            mask = None if lengths is None else length_mask(lengths.to(x.device), x.size(-1))
            return dp(x, mask)
        # inference: DurationPredictor.infer, whose values do not depend on the sequence length,
        # so that streaming (UnitStreamer, a few units at a time) gives these durations exactly.
        # Rows are laid end to end, each between 2p "no unit" ids (each position reads 2p each side)
        B, T = units_dedup.shape
        w = dp.inference_weights(self.unit_embedding.weight)
        q = 2 * w.p
        u = units_dedup.detach().cpu().numpy().astype(np.int64)
        valid = np.ones((B, T), dtype=bool) if lengths is None else np.arange(T)[None] < lengths.detach().cpu().numpy()[:, None]
        if valid.any() and (u[valid].min() < 0 or u[valid].max() >= w.pad):
            raise IndexError(f"unit ids must be in 0..{w.pad - 1}, got {u[valid].min()}..{u[valid].max()}")
        ids = np.full((B, T + 2 * q), w.pad, dtype=np.int64)
        ids[:, q : q + T] = np.where(valid, u, w.pad)
        out = np.zeros(B * (T + 2 * q), dtype=np.float32)
        out[: out.size - 2 * q] = dp.infer(w, ids.reshape(-1))  # value of ids[b, q + t] at b * (T + 2q) + t
        return torch.from_numpy(out.reshape(B, T + 2 * q)[:, :T].copy()).to(units_dedup.device)

    @staticmethod
    def expand_by_durations(x: Tensor, durations: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """See :func:`expand_by_durations`: ``[B, C, T]`` × ``[B, T]`` frames → ``([B, C, T'], [B])``."""
        return expand_by_durations(x, durations, lengths)

    @torch.no_grad()
    def infer(
        self,
        units: Tensor,
        pitch: Tensor | None = None,
        style: Tensor | None = None,
        speaker: Tensor | None = None,
        style_id: Tensor | None = None,
        *,
        lengths: Tensor | None = None,
        dur_pred: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """Inference on a right-padded batch with codes aligned to the units.

        Args:
            units: ``[B, T]`` units: frame-rate (``dur_pred=False``) or deduplicated.
            pitch, style: ``[B, T]`` one code per unit (see :meth:`embed`, ``aligned=True``).
            speaker, style_id: ``[B]``.
            lengths: ``[B]`` valid units per row (default: all).
            dur_pred: give each unit its predicted duration first.

        Returns:
            ``(wav [B, N], samples [B])``: waveforms right-padded with zeros, and their lengths.
        """
        B, T = units.shape
        if lengths is None:
            lengths = torch.full((B,), T, dtype=torch.long, device=units.device)
        x = self.embed(units, pitch, style, speaker, style_id, aligned=True)
        if dur_pred:
            frames = durations_from_log(self.predict_durations(units, lengths))
            x, lengths = expand_by_durations(x, frames, lengths)
        full = bool((lengths == x.size(-1)).all())
        wav = self.vocode(x, None if full else lengths)
        return wav[:, 0, :], lengths * self.hop


def num_parameters(module: nn.Module) -> int:
    """Trainable parameter count."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)

