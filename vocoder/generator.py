"""HiFi-GAN's generator (type-1 residual blocks, multi-receptive-field fusion) in speechbrain's parameter layout, with one forward path.

The modules and tensor names are speechbrain's ``HifiganGenerator`` (``speechbrain.lobes.models.HifiGAN``)
one for one — ``conv_pre.conv``, ``ups.N.conv``, ``resblocks.N.convs{1,2}.M.conv``, ``conv_post.conv``,
each a weight-normed ``nn.Conv1d`` / ``nn.ConvTranspose1d`` (``parametrizations.weight.original0/1``,
or a plain ``weight`` once folded) — so its checkpoints, ours and Meta's (``meta.py``'s renames) load
unchanged, and ``tests/test_vocoder_generator.py`` checks the audio against speechbrain's own forward
with the same state dict. What differs is the forward, written once here:

* every convolution pads with zeros inside the kernel (``nn.Conv1d(padding=d·(k-1)/2)``), as
  Meta's and jik876's generators do. speechbrain's ``Conv1d`` pads with reflection in a separate
  ``F.pad`` copy before each convolution: different audio at the edges (Meta's layout would not
  be reproduced), a failure on inputs shorter than the pad, and ~12 % of the time;
* the first activation of a stage is computed once for all its residual blocks (they all start
  with ``leaky_relu`` of the same tensor);
* ``lengths`` zeroes every convolution's input beyond each row's end, so a right-padded batch
  gives each row's audio alone; ``inject`` adds a signal after each upsampling (the harmonic
  source of :class:`~spiritlm.vocoder.model.UnitHifiGAN`);
* CPU inference (channels-last) runs the convolutions that gain from it as FFT or Winograd
  convolutions (:meth:`WNConv1d.fast_path`), and the residual blocks of a long, low-channel stage
  tile by tile (:func:`stage_tile`), so that a tile's activations stay in cache.

(vocoder/README.md, "Generator": why a module of our own rather than speechbrain's class.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm

from ..tensors import length_mask
from .fftconv import dense_time_slice, fft_block_size, fft_conv, weight_spectrum
from .winograd import kernel_transform, winograd_conv, winograd_tile

__all__ = ["LRELU_SLOPE", "WNConv1d", "WNConvTranspose1d", "ResBlock1", "HifiGANGenerator"]

#: slope of the LeakyReLU before every convolution but the last (that one uses 0.01, torch's default)
LRELU_SLOPE = 0.1


def _gate(x: Tensor, mask: Tensor | None) -> Tensor:
    return x if mask is None else x * mask


def _version(t: Tensor) -> int:
    """``t``'s in-place modification counter (-1 for an inference tensor, which has none)."""
    try:
        return t._version
    except RuntimeError:
        return -1


#: oneDNN's fused-convolution ops, which take a weight packed once into the blocked layout its
#: kernels read (``torch.ops.mkldnn``: what inductor's CPU freezing uses); None without oneDNN
_ONEDNN = torch.ops.mkldnn if torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise") else None


class _ChannelsLast(nn.Module):
    """A conv module that also runs ``[B, C, 1, T]`` channels-last inputs (the CPU inference
    layout of :meth:`HifiGANGenerator.forward`) as a 2-D convolution with a ``1 × k`` kernel.

    The weight is prepared once while it is unchanged: a channels-last copy and, for float32
    inputs with oneDNN, that copy packed into oneDNN's blocked layout. ``F.conv2d`` repacks the
    weight on every call, which at the short inputs of a stream's push costs as much as the
    convolution (256 channels, k = 3, 50 steps: 0.53 → 0.20 ms) and ~10 % at 500 steps
    (vocoder/README.md, "Measured"). The packed copy is not part of the state dict, and is
    dropped when the module is copied."""

    conv: nn.Conv1d | nn.ConvTranspose1d
    #: what is derived from the weight (channels-last copy "cl", oneDNN packing "packed", FFT
    #: spectra by block size), for the weight identified by ``_derived_key``
    _derived: dict | None = None
    _derived_key: tuple[int, int, torch.device] | None = None

    def __getstate__(self) -> dict:
        # a packed oneDNN tensor has no storage to copy: copies (deepcopy) rebuild what is derived
        return {k: v for k, v in self.__dict__.items() if k not in ("_derived", "_derived_key")}

    def _cache(self) -> dict:
        """The weight's derived tensors, emptied when the weight changed (a new tensor, an
        in-place update or a move: its storage, version counter or device)."""
        w = self.conv.weight
        key = (w.data_ptr(), _version(w), w.device)
        if self._derived_key != key or self._derived is None:
            self._derived, self._derived_key = {}, key
        return self._derived

    def _weight_2d(self) -> Tensor:
        cache = self._cache()
        if "cl" not in cache:
            cache["cl"] = self.conv.weight.detach().unsqueeze(2).contiguous(memory_format=torch.channels_last)
        return cache["cl"]

    def _packed(self, x: Tensor) -> Tensor | None:
        """The weight packed for oneDNN (its first input's shape picks the layout; later lengths
        read it as fast), or None where ``F.conv2d`` runs instead: no oneDNN, not float32
        (autocast's bfloat16), or not a CPU tensor."""
        if _ONEDNN is None or x.dtype != torch.float32 or x.device.type != "cpu" or torch.is_autocast_enabled("cpu"):
            return None
        cache = self._cache()
        if "packed" not in cache:
            c = self.conv
            w = self._weight_2d()
            if isinstance(c, nn.ConvTranspose1d):
                cache["packed"] = _ONEDNN._reorder_convolution_transpose_weight(
                    w, [0, c.padding[0]], [0, 0], [1, c.stride[0]], [1, 1], 1, list(x.shape))
            else:
                cache["packed"] = _ONEDNN._reorder_convolution_weight(
                    w, [0, c.padding[0]], [1, c.stride[0]], [1, c.dilation[0]], 1, list(x.shape))
        return cache["packed"]

    def conv_cl(self, x: Tensor, padding: int | None = None) -> Tensor:
        """The direct convolution of a channels-last ``[B, C_in, 1, T]`` input with ``padding``
        zeros each side (a transposed layer: ``padding`` outputs cropped each side); None: the
        layer's own."""
        return self.bind_cl(x)(x, padding)

    def bind_cl(self, like: Tensor) -> Callable[[Tensor, int | None], Tensor]:
        """:meth:`conv_cl` as a function ``f(x, padding)`` with the weight as it is now bound (packed
        for inputs of ``like``'s dtype and device): a stream binds each layer once, when it starts,
        rather than looking the weight up on every push."""
        c = self.conv
        bias, stride, dil, own = c.bias, c.stride[0], c.dilation[0], c.padding[0]
        w = self._packed(like)
        transposed = isinstance(c, nn.ConvTranspose1d)
        if w is not None and transposed:
            return lambda x, padding=None: _ONEDNN._convolution_transpose_pointwise(  # type: ignore[union-attr]
                x, w, bias, [0, own if padding is None else padding], [0, 0], [1, stride], [1, 1], 1, "none", [], "")
        if w is not None:
            return lambda x, padding=None: _ONEDNN._convolution_pointwise(  # type: ignore[union-attr]
                x, w, bias, [0, own if padding is None else padding], [1, stride], [1, dil], 1, "none", [], "")
        w2 = self._weight_2d()
        if transposed:
            return lambda x, padding=None: F.conv_transpose2d(x, w2, bias, stride=(1, stride), padding=(0, own if padding is None else padding))
        return lambda x, padding=None: F.conv2d(x, w2, bias, stride=(1, stride), padding=(0, own if padding is None else padding),
                                                dilation=(1, dil))

    def _spectrum(self, block: int) -> Tensor:
        """The weight's :func:`~spiritlm.vocoder.fftconv.weight_spectrum` for ``block``, kept while
        the weight is unchanged (one per block size in use)."""
        cache = self._cache()
        if block not in cache:
            cache[block] = weight_spectrum(self.conv.weight, block)
        return cache[block]

    def _transformed(self, tile: int) -> Tensor:
        """The weight's :func:`~spiritlm.vocoder.winograd.kernel_transform` for ``tile``, kept while
        the weight is unchanged."""
        cache = self._cache()
        key = ("winograd", tile)
        if key not in cache:
            cache[key] = kernel_transform(self.conv.weight, tile)
        return cache[key]


class WNConv1d(_ChannelsLast):
    """speechbrain's ``Conv1d(padding="same", weight_norm=True, skip_transpose=True)`` layout
    (``.conv``), zero padding: ``[B, C_in, T] → [B, C_out, T]`` (odd kernels); also
    ``[B, C_in, 1, T] → [B, C_out, 1, T]`` (inference, folded weights), as an FFT convolution
    where ``use_fft`` and :func:`~spiritlm.vocoder.fftconv.fft_block_size` say it is faster."""

    #: channels-last inputs may run as FFT convolutions (``HifiGANGenerator.fft_convs`` sets it)
    use_fft: bool = True
    #: channels-last inputs may run as Winograd convolutions (``HifiGANGenerator.winograd_convs``)
    use_winograd: bool = True

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1, bias: bool = True) -> None:
        super().__init__()
        pad = dilation * (kernel_size - 1) // 2
        self.conv = weight_norm(nn.Conv1d(in_channels, out_channels, kernel_size, dilation=dilation, padding=pad, bias=bias))

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 3:
            return self.conv(x)
        return self.run_cl(x)

    def run_cl(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        """Channels-last inference ``[B, C_in, 1, T] → [B, C_out, 1, T]``, plus ``residual`` (same
        shape) if given: on the FFT path the add is part of the output's one write (a residual
        block's second convolution; a separate pass over a 64-channel 8,000-step output costs
        ~0.2 ms), on the direct one a second pass."""
        c = self.conv
        k, d = c.kernel_size[0], c.dilation[0]
        path = self.fast_path(x.size(-1))
        if path is not None and path[0] == "winograd":
            return winograd_conv(x, self._transformed(path[1]), c.bias, k, d, path[1], residual=residual)
        if path is not None:
            return fft_conv(x, self._spectrum(path[1]), c.bias, k, d, path[1], residual=residual)
        y = self.conv_cl(x)
        return y if residual is None else y.add_(residual)

    def fast_path(self, length: int) -> tuple[str, int] | None:
        """How :meth:`run_cl` convolves ``length`` channels-last steps: ``("winograd", m)`` (tiles of
        ``m`` outputs, :func:`~spiritlm.vocoder.winograd.winograd_tile`), ``("fft", N)`` (blocks of
        ``N``, :func:`~spiritlm.vocoder.fftconv.fft_block_size`), or None (direct). Winograd first:
        where both apply (kernels of 7 at 128–255 channels) it is the faster."""
        c = self.conv
        args = (c.in_channels, c.out_channels, c.kernel_size[0], c.dilation[0], length)
        tile = winograd_tile(*args) if self.use_winograd else None
        if tile is not None:
            return "winograd", tile
        block = fft_block_size(*args) if self.use_fft else None
        return None if block is None else ("fft", block)


class WNConvTranspose1d(_ChannelsLast):
    """speechbrain's ``ConvTranspose1d(padding=(k-u)//2, weight_norm=True)`` layout (``.conv``):
    ``[B, C_in, T] → [B, C_out, T·u]`` for ``k - u`` even; also ``[B, C_in, 1, T]`` inputs."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.conv = weight_norm(nn.ConvTranspose1d(in_channels, out_channels, kernel_size, stride, padding=(kernel_size - stride) // 2))

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 3:
            return self.conv(x)
        return self.conv_cl(x)


class ResBlock1(nn.Module):
    """HiFi-GAN's type-1 residual block: for each dilation ``d``,
    ``x += conv_k(lrelu(conv_{k,d}(lrelu(x))))`` (``convs1`` dilated, ``convs2`` not)."""

    def __init__(self, channels: int, kernel_size: int, dilations: Sequence[int]) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(WNConv1d(channels, channels, kernel_size, d) for d in dilations)
        self.convs2 = nn.ModuleList(WNConv1d(channels, channels, kernel_size) for _ in dilations)

    @property
    def reach(self) -> int:
        """Steps on either side of an output that it depends on: ``Σ d·(k-1)/2 + (k-1)/2``."""
        return sum(c1.conv.padding[0] + c2.conv.padding[0] for c1, c2 in zip(self.convs1, self.convs2))

    def forward(self, x: Tensor, first: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        """``x`` ``[B, C, T]``; ``first``: ``lrelu(x)`` already computed (gated); ``mask``
        ``[B, 1, T]`` zeroes each convolution's input beyond each row's end."""
        for i, (c1, c2) in enumerate(zip(self.convs1, self.convs2)):
            xt = first if i == 0 and first is not None else _gate(F.leaky_relu(x, LRELU_SLOPE), mask)
            h = c1(xt)  # a new tensor: activated in place outside autograd
            h = _gate(F.leaky_relu(h, LRELU_SLOPE, inplace=not h.requires_grad), mask)
            if h.dim() == 4 and not h.requires_grad:  # channels-last inference: the add in the convolution's output pass
                x = c2.run_cl(h, residual=x)
            else:
                xt = c2(h)
                x = xt + x if xt.requires_grad else xt.add_(x)
        return x


class HifiGANGenerator(nn.Module):
    """``[B, C_in, T]`` → ``[B, 1, T · prod(upsample_rates)]`` in [-1, 1].

    Args:
        in_channels: ``C_in``.
        upsample_initial_channel: channels after ``conv_pre`` (halved by every upsampling).
        upsample_rates, upsample_kernel_sizes: stride and kernel of each transposed convolution.
        resblock_kernel_sizes, resblock_dilation_sizes: the residual blocks of every stage.

    >>> g = HifiGANGenerator(8, 16, [4, 2], [8, 4], [3], [[1, 3]])
    >>> g(torch.randn(2, 8, 5)).shape
    torch.Size([2, 1, 40])
    """

    def __init__(
        self,
        in_channels: int,
        upsample_initial_channel: int,
        upsample_rates: Sequence[int],
        upsample_kernel_sizes: Sequence[int],
        resblock_kernel_sizes: Sequence[int],
        resblock_dilation_sizes: Sequence[Sequence[int]],
    ) -> None:
        super().__init__()
        self.num_kernels = len(resblock_kernel_sizes)
        self.num_upsamples = len(upsample_rates)
        self.upsample_rates = list(upsample_rates)
        self.conv_pre = WNConv1d(in_channels, upsample_initial_channel, 7)
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        ch = upsample_initial_channel
        for u, k in zip(upsample_rates, upsample_kernel_sizes):
            self.ups.append(WNConvTranspose1d(ch, ch // 2, k, u))
            ch //= 2
            for rk, dil in zip(resblock_kernel_sizes, resblock_dilation_sizes):
                self.resblocks.append(ResBlock1(ch, rk, dil))
        self.conv_post = WNConv1d(ch, 1, 7)

    def forward(self, x: Tensor, lengths: Tensor | None = None, inject: Callable[[int, int], Tensor] | None = None) -> Tensor:
        """The generator.

        Args:
            x: ``[B, C_in, T]``.
            lengths: ``[B]`` valid steps per row of a right-padded batch (None: all full); the
                output is zero beyond ``length · prod(rates)``.
            inject: ``inject(i, n)`` → ``[B, C_i, n]`` added after upsampling layer ``i``.
        """
        cl = self.channels_last(x)
        if cl:  # [B, C, 1, T] channels-last: oneDNN's preferred layout, no reorder around each conv
            x = x.unsqueeze(2).contiguous(memory_format=torch.channels_last)
        mask = None if lengths is None else _mask(lengths, x.size(-1), x.dtype, cl)
        o = self.conv_pre(_gate(x, mask))
        scale = 1
        for i in range(self.num_upsamples):
            o = self.ups[i](_gate(F.leaky_relu(o, LRELU_SLOPE), mask))
            if inject is not None:
                e = inject(i, o.size(-1))
                o = o.add_(e.unsqueeze(2)) if cl else o + e  # in place: o stays channels-last
            scale *= self.upsample_rates[i]
            mask = None if lengths is None else _mask(lengths * scale, o.size(-1), o.dtype, cl)
            tile = stage_tile(o.size(1), o.size(-1), o.size(0), self._reach(i)) if cl and self.tiled_stages else None
            o = self._stage(i, o, mask) if tile is None else self._tiled_stage(i, o, mask, tile)
        o = self.conv_post(_gate(F.leaky_relu(o), mask))  # slope 0.01, as speechbrain and Meta
        o = _gate(torch.tanh(o), mask)
        return o.squeeze(2).contiguous() if cl else o

    def _stage(self, i: int, o: Tensor, mask: Tensor | None) -> Tensor:
        """Stage ``i``'s residual blocks on their input ``o``: the mean of their outputs."""
        first = _gate(F.leaky_relu(o, LRELU_SLOPE), mask)  # shared by the stage's blocks
        blocks = self.resblocks[i * self.num_kernels:(i + 1) * self.num_kernels]
        z = blocks[0](o, first, mask)
        for block in blocks[1:]:
            z = z + block(o, first, mask)
        return z / self.num_kernels

    def _reach(self, i: int) -> int:
        """Steps on either side that an output of stage ``i``'s residual blocks reads."""
        return max(block.reach for block in self.resblocks[i * self.num_kernels:(i + 1) * self.num_kernels])

    def _tiled_stage(self, i: int, o: Tensor, mask: Tensor | None, tile: int) -> Tensor:
        """:meth:`_stage` on a channels-last ``o`` ``[B, C, 1, T]`` (``mask`` ``[B, 1, 1, T]`` or
        None), ``tile`` output steps at a time, each from its input and the ``reach`` steps either
        side that its outputs read (the utterance's own edges are the convolutions' zero padding,
        and the mask gates a tile's steps as it gates the whole): the same outputs (to float
        rounding: the FFT and Winograd paths' blocks fall differently), with every tensor of a
        tile small enough to stay in cache between the stage's ~20 passes over it."""
        reach = self._reach(i)
        t = o.size(-1)
        out = torch.empty_like(o)
        for a in range(0, t, tile):
            b = min(t, a + tile)
            lo, hi = max(0, a - reach), min(t, b + reach)
            piece = o[..., lo:hi]
            piece = dense_time_slice(piece) if o.size(0) == 1 else piece.contiguous(memory_format=torch.channels_last)
            gate = None if mask is None else mask[..., lo:hi]
            out[..., a:b] = self._stage(i, piece, gate)[..., a - lo:b - lo]
        return out

    def channels_last(self, x: Tensor) -> bool:
        """Whether :meth:`forward` runs ``x`` as ``[B, C, 1, T]`` channels-last 2-D convolutions:
        on a CPU, with weight norm folded (inference), no gradient to the weights. Same audio up to
        float rounding (≤ 3e-7 on a 4 s utterance of the ``base`` layout at amplitude 0.17), ~1.25x
        faster on the 2-core EPYC (vocoder/README.md, "Measured")."""
        return (x.device.type == "cpu" and x.dim() == 3 and not self.has_weight_norm
                and not (torch.is_grad_enabled() and self.conv_pre.conv.weight.requires_grad))

    @property
    def fft_convs(self) -> bool:
        """Whether channels-last inference runs the convolutions that :func:`~spiritlm.vocoder.fftconv.fft_block_size`
        picks (kernels of 11 at 64+ channels, any dilation: 18 of ``base``'s and ``expressive``'s, none
        of ``tiny``'s; and kernels of 7 at 128–255 where the Winograd path is off) as FFT convolutions.
        Default True; False: those run direct (same audio within ~1e-6; the kernel spectra, ~82 MiB
        for ``base``, ~107 with Winograd off, are not built)."""
        return self._all_convs("use_fft")

    @fft_convs.setter
    def fft_convs(self, on: bool) -> None:
        self._set_all_convs("use_fft", on)

    @property
    def winograd_convs(self) -> bool:
        """Whether channels-last inference runs the convolutions that :func:`~spiritlm.vocoder.winograd.winograd_tile`
        picks (kernels of 7 at 64+ channels and of 3 at 128+: 30 of ``base``'s and ``expressive``'s
        residual-block convolutions and their ``conv_pre``; ``tiny``'s ``conv_pre`` and its six
        kernel-7 convolutions at 64 channels) as Winograd convolutions.
        Default True; False: those run as FFT or direct convolutions (audio within ~2.4e-6 of the
        Winograd path's on a 4 s ``base`` utterance at amplitude 0.17; the transformed kernels,
        ~45 MiB for ``base``, are not built)."""
        return self._all_convs("use_winograd")

    @winograd_convs.setter
    def winograd_convs(self, on: bool) -> None:
        self._set_all_convs("use_winograd", on)

    #: channels-last inference runs long stages tile by tile (:func:`stage_tile`; the same audio
    #: to float rounding, less memory); False: every stage whole
    tiled_stages: bool = True

    def _all_convs(self, switch: str) -> bool:
        return all(getattr(m, switch) for m in self.modules() if isinstance(m, WNConv1d))

    def _set_all_convs(self, switch: str, on: bool) -> None:
        for m in self.modules():
            if isinstance(m, WNConv1d):
                setattr(m, switch, bool(on))

    def weight_norm_convs(self) -> list[nn.Module]:
        """The weight-normed convolutions (``.conv`` of every conv module)."""
        return [m.conv for m in self.modules() if isinstance(m, (WNConv1d, WNConvTranspose1d))]

    @property
    def has_weight_norm(self) -> bool:
        """Whether the convolutions still carry weight-norm parametrizations."""
        return parametrize.is_parametrized(self.conv_pre.conv)

    def remove_weight_norm(self) -> None:
        """Folds weight norm into plain weights (inference; idempotent)."""
        for conv in self.weight_norm_convs():
            if parametrize.is_parametrized(conv, "weight"):
                parametrize.remove_parametrizations(conv, "weight")


#: bytes of one channels-last activation tile of a tiled stage (:func:`stage_tile`): 2 MiB
STAGE_TILE_BYTES = 2 << 20
#: stages with more channels run whole (:func:`stage_tile`)
MAX_TILED_CHANNELS = 128
#: a tile is at least this many times its stage's reach long (:func:`stage_tile`)
MIN_TILE_REACHES = 16


def stage_tile(channels: int, length: int, batch: int = 1, reach: int = 0, dtype_bytes: int = 4) -> int | None:
    """Output steps per tile for a stage of ``channels`` run on ``batch`` rows of ``length`` steps
    whose outputs read ``reach`` steps either side, or None to run it whole: tiles of
    ``STAGE_TILE_BYTES`` (2 MiB) of activations, and at least ``MIN_TILE_REACHES`` (16) reaches
    long (so that the recomputed edges stay under 1/8 of a tile, also for a batch of many rows),
    once the stage's input is at least three tiles long, at up to ``MAX_TILED_CHANNELS`` (128)
    channels.

    Why: a residual block passes over its stage's activations ~20 times (convolutions, activations,
    residual adds), and a stage's three blocks read the same input; once an activation outgrows
    the cache every pass goes to memory. Measured per stage inside the ``base`` generator (1
    thread, 2-core AMD EPYC with 2 MiB of L2 a core and 32 MiB of L3; paired rounds, whole ÷
    tiled): at 9.1 s the 32-channel stage (9.3 MB) 1.11×, the 16-channel one 1.22×; at 20 s the
    64-, 32- and 16-channel stages 1.21×, 1.24×, 1.34×; at 4–4.5 s (4–4.6 MB) tiles of 1–2 MiB lost
    1–6 %, and tiles of 512 KiB lost everywhere (the halos; the weights read again per tile). At
    60 s: 128 channels 1.36×, 64 channels 1.74×, but 256 channels 0.95×: every tile reads the
    stage's weights again (``base``'s 256-channel stage: 37 MB, plus the FFT spectra and Winograd
    transforms), 4× a 128-channel stage's for the same 2 MiB of activations. ``base`` tiles its
    32- and 16-channel stages from 6.1 s of audio, its 64-channel one from 12.3 s and its
    128-channel one from 24.6 s (vocoder/README.md, "Tiled stages")."""
    if channels > MAX_TILED_CHANNELS:
        return None
    tile = max(1, STAGE_TILE_BYTES // (batch * channels * dtype_bytes), MIN_TILE_REACHES * reach)
    return tile if length >= 3 * tile else None


def _mask(lengths: Tensor, n: int, dtype: torch.dtype, cl: bool = False) -> Tensor:
    """``[B, 1, n]`` (``cl``: ``[B, 1, 1, n]``): 1 inside each row's length."""
    m = length_mask(lengths, n)[:, None, :].to(dtype)
    return m.unsqueeze(2) if cl else m
