"""Incremental HiFi-GAN generator: frames that became final in → the audio samples that became final out.

:class:`StreamingGenerator` runs :meth:`HifiGANGenerator.forward
<spiritlm.vocoder.generator.HifiGANGenerator.forward>` (and the harmonic source's injection of
:meth:`UnitHifiGAN._vocode_with_source <spiritlm.vocoder.model.UnitHifiGAN._vocode_with_source>`)
layer by layer on a growing input, keeping per layer only the tail of its input that later
outputs still read. Every output sample is computed once, so a stream does the arithmetic of
whole synthesis, whatever the chunk size; what a push adds is per-call overhead and every layer
starting with its kernels out of cache again (``base`` on the 2-core VM: ~20 ms a push against
~73 ms of whole synthesis per second of audio; vocoder/README.md, Streaming, "The floor").

Each convolution is a :class:`_StreamConv` / :class:`_StreamConvT` over a stream of samples at
its layer's rate. Given newly final inputs ``[n_in, n_in + n)`` it emits the outputs whose inputs
are all present: a ``same``-padded convolution lags its input by its right padding
``d·(k-1)/2``; a transposed convolution's output ``o`` (after the ``(k-u)/2`` crop) reads inputs
``ceil((o+P-k+1)/u) … floor((o+P)/u)``. ``final=True`` supplies the right edge's zero padding and
flushes. Residual adds, the excitation's injection and the mean over a stage's residual blocks
combine streams that lag by different amounts: each emits the samples all its operands have
and keeps the rest — :class:`_Sum` (a branch and its residual, a stage's blocks) computes on
the kept and new samples in pieces, :class:`_Align` (the
excitation) queues each operand and emits their common prefix. The weights are the generator's own modules (in the CPU inference layout
``[1, C, 1, T]`` their ``conv_cl``, with the weight packed once for oneDNN, as ``forward`` runs
them), never copied into this state. Where ``forward`` would run a convolution as an
FFT convolution (:mod:`~spiritlm.vocoder.fftconv`: kernels of 11 at 64+ channels, of 7 at 128, long enough inputs)
a push does too, through the module's own forward, cutting the ``p`` outputs at each end that its
zero padding made (``2p`` extra outputs a push, against ``N`` new ones).

Units: the input is the generator's input at the frame rate (25 Hz, ``model.hop`` = 640
samples a frame at 16 kHz); the excitation, when the model has a harmonic source, is at the
audio rate (``model.hop`` samples per frame); the output is audio samples.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .fftconv import dense_time_slice
from .generator import LRELU_SLOPE, HifiGANGenerator, ResBlock1, WNConv1d, WNConvTranspose1d

__all__ = ["StreamingGenerator"]


def _len(x: Tensor) -> int:
    return x.size(-1)


class _Layout:
    """The tensor layout a stream runs in: ``[1, C, T]`` (1-D convolutions) or, on a CPU with
    folded weights (:meth:`HifiGANGenerator.channels_last`), ``[1, C, 1, T]`` channels-last 2-D
    convolutions with ``1 × k`` kernels, as :meth:`HifiGANGenerator.forward` runs them."""

    def __init__(self, channels_last: bool, dtype: torch.dtype, device: torch.device) -> None:
        self.cl, self.dtype, self.device = channels_last, dtype, device

    def zeros(self, channels: int, n: int) -> Tensor:
        if not self.cl:
            return torch.zeros(1, channels, n, dtype=self.dtype, device=self.device)
        return torch.zeros(1, channels, 1, n, dtype=self.dtype, device=self.device).contiguous(memory_format=torch.channels_last)

    def enter(self, x: Tensor) -> Tensor:
        """``[1, C, T]`` → this layout."""
        return x.unsqueeze(2).contiguous(memory_format=torch.channels_last) if self.cl else x

    def conv(self, m: nn.Module, stride: int, dilation: int) -> Callable[[Tensor, int], Tensor]:
        """``f(x, padding)``: ``m``'s convolution of ``x`` with ``padding`` zeros each side
        (transposed: no crop). Channels-last: the module's own ``conv_cl``, bound when the stream
        starts to the weight it keeps packed for oneDNN (``F.conv2d`` would repack it on every
        push's short input)."""
        if isinstance(m, WNConvTranspose1d):
            if self.cl:
                run = m.bind_cl(self.zeros(m.conv.in_channels, 1))
                return lambda x, pad: run(x, 0)  # no crop: the stream cuts its own outputs
            return lambda x, pad: F.conv_transpose1d(x, m.conv.weight, m.conv.bias, stride=stride)
        if isinstance(m, WNConv1d):
            c = m.conv
            if self.cl:
                return m.bind_cl(self.zeros(c.in_channels, 1))
            return lambda x, pad: F.conv1d(x, c.weight, c.bias, stride=stride, padding=pad, dilation=dilation)
        # the harmonic source's strided nn.Conv1d runs 1-D on the excitation, as in forward
        if self.cl:
            return lambda x, pad: F.conv1d(x, m.weight, m.bias, stride=stride, padding=pad, dilation=dilation).unsqueeze(2)
        return lambda x, pad: F.conv1d(x, m.weight, m.bias, stride=stride, padding=pad, dilation=dilation)


def _view(x: Tensor, a: int | None = None, b: int | None = None) -> Tensor:
    """``x[..., a:b]`` as a view (:func:`~spiritlm.vocoder.fftconv.dense_time_slice`)."""
    return dense_time_slice(x[..., a:b])


def _span(x: Tensor, a: int | None = None, b: int | None = None) -> Tensor:
    """:func:`_view` of ``x[..., a:b]``, or a copy where the slice is at most half of its
    tensor's memory, so that the queues and tails kept between pushes do not hold a whole push's
    tensors alive (fresh pages cost more)."""
    y = x[..., a:b]
    if 2 * y.numel() <= x.numel():
        return y.clone()  # preserve_format: channels-last stays so
    return dense_time_slice(y)


def _cat(a: Tensor, b: Tensor) -> Tensor:
    """``a`` then ``b`` on the time axis (an empty operand is skipped: no copy, layout kept)."""
    if _len(a) == 0:
        return b
    return a if _len(b) == 0 else torch.cat([a, b], dim=-1)


class _StreamConv:
    """A zero-padded ``Conv1d`` (kernel ``k``, stride ``s``, dilation ``d``, padding ``p`` each
    side) on a growing input: output ``o`` reads inputs ``o·s - p + [0, d·(k-1)]``.

    ``push(x, final)``: ``x`` the next inputs ``[1, C_in, (1,) n]``; returns the outputs that are
    now final (all of them once ``final``, with ``p`` zeros after the last input). Stride 1 (the
    generator's convolutions): the utterance's edges are the convolution's own zero padding, so a
    single push of a whole utterance is ``forward``'s convolution, without copies; strided (the
    excitation's) keeps its edge zeros in the buffer."""

    def __init__(self, module: nn.Module, layout: _Layout, in_layout: _Layout | None = None) -> None:
        c = module.conv if isinstance(module, WNConv1d) else module
        assert isinstance(c, nn.Conv1d)
        self.lay, self.in_lay = layout, in_layout or layout
        self.k, self.s, self.d, self.p = c.kernel_size[0], c.stride[0], c.dilation[0], c.padding[0]
        self.c_in, self.c_out = c.in_channels, c.out_channels
        self.reach = self.d * (self.k - 1)  # input span of one output, minus 1
        self.run = layout.conv(module, self.s, self.d)
        # channels-last WNConv1d: its own forward where it would take the FFT or Winograd path
        self.module = module if isinstance(module, WNConv1d) and layout.cl else None
        self.b0 = 0 if self.s == 1 else -self.p  # input index of buf[0]
        self.buf = self.in_lay.zeros(self.c_in, -self.b0)  # strided: the left zero padding
        self.n_in = 0
        self.n_out = 0

    def _fast(self, n: int) -> bool:
        """Whether the module's forward runs ``n`` inputs as an FFT or Winograd convolution (as
        ``vocode`` would)."""
        return self.module is not None and self.module.fast_path(n) is not None

    def count(self, n_in: int, final: bool = False) -> int:
        """Outputs final once ``n_in`` inputs are (``final``: the whole input's output length)."""
        avail = n_in + (self.p if final else 0)
        return max(0, (avail - 1 + self.p - self.reach) // self.s + 1)

    def push(self, x: Tensor, final: bool) -> Tensor:
        self.buf = _cat(self.buf, x)
        self.n_in += _len(x)
        end = max(self.n_out, self.count(self.n_in, final))
        if end == self.n_out:
            out = self.lay.zeros(self.c_out, 0)
        elif self.s == 1 and (final or self.n_out - self.p < self.b0):
            # an edge in reach: the whole buffer with its zero padding; output j is at input b0 + j
            y = self.run(self.buf, self.p) if self.module is None else self.module(self.buf)
            out = _span(y, self.n_out - self.b0, end - self.b0)
        else:
            if final:  # strided: the right zero padding
                self.buf = _cat(self.buf, self.in_lay.zeros(self.c_in, self.p))
            a = self.n_out * self.s - self.p - self.b0
            b = (end - 1) * self.s - self.p + self.reach + 1 - self.b0
            seg = _span(self.buf, a, b)
            if self._fast(_len(seg)):  # the module pads p zeros each side: its first and last p outputs are not ours
                out = _span(self.module(seg), self.p, self.p + end - self.n_out)  # type: ignore[misc]
            else:
                out = self.run(seg, 0)
        self.n_out = end
        drop = max(0, min(_len(self.buf), self.n_out * self.s - self.p - self.b0))  # inputs no output reads again
        self.buf, self.b0 = _span(self.buf, drop), self.b0 + drop
        return out


class _StreamConvT:
    """A transposed convolution (kernel ``k``, stride ``u``, crop ``P = (k-u)/2`` each side) on a
    growing input: cropped output ``o`` reads inputs ``ceil((o+P-k+1)/u) … floor((o+P)/u)``;
    ``u`` outputs per input. ``push`` as :class:`_StreamConv`'s."""

    def __init__(self, module: WNConvTranspose1d, layout: _Layout) -> None:
        c = module.conv
        self.lay = layout
        self.k, self.u, self.P = c.kernel_size[0], c.stride[0], c.padding[0]
        self.c_out = c.out_channels
        self.run = layout.conv(module, self.u, 1)
        self.buf = layout.zeros(c.in_channels, 0)  # inputs from index b0 on
        self.b0 = 0
        self.n_in = 0
        self.n_out = 0

    def count(self, n_in: int, final: bool = False) -> int:
        return n_in * self.u if final else max(0, n_in * self.u - self.P)

    def _first_input(self, o: int) -> int:
        return max(0, -(-(o + self.P - self.k + 1) // self.u))

    def push(self, x: Tensor, final: bool) -> Tensor:
        self.buf = _cat(self.buf, x)
        self.n_in += _len(x)
        end = max(self.n_out, self.count(self.n_in, final))
        if end == self.n_out:
            return self.lay.zeros(self.c_out, 0)
        lo = self._first_input(self.n_out)
        hi = min(self.n_in - 1, (end - 1 + self.P) // self.u)
        y = self.run(_span(self.buf, lo - self.b0, hi + 1 - self.b0), 0)  # (hi-lo)·u + k outputs
        j = self.n_out + self.P - lo * self.u
        out = _span(y, j, j + end - self.n_out)
        self.n_out = end
        keep = self._first_input(end)
        self.buf, self.b0 = _span(self.buf, keep - self.b0), keep
        return out


class _Align:
    """Operands of an elementwise combination that arrive lagging by different amounts: one
    queue each; ``push`` returns the next common prefix of every operand (equal lengths)."""

    def __init__(self, n: int) -> None:
        self.q: list[Tensor | None] = [None] * n

    def push(self, *parts: Tensor, fit: bool = False) -> list[Tensor]:
        """Appends ``parts`` (one per operand); ``fit``: the stream's end, where the last operand
        (the excitation, as ``_fit_length``) is cut or zero-padded to the first's length."""
        self.q = [p if q is None else _cat(q, p) for q, p in zip(self.q, parts)]
        if fit:
            first, last = self.q[0], self.q[-1]
            assert first is not None and last is not None
            n, m = _len(first), _len(last)
            self.q[-1] = _span(last, None, n) if m >= n else torch.cat([last, last.new_zeros(*last.shape[:-1], n - m)], dim=-1)
        n = min(_len(q) for q in self.q)  # type: ignore[arg-type]
        out = [_span(q, None, n) for q in self.q]  # type: ignore[index]
        self.q = [_span(q, n) for q in self.q]  # type: ignore[index]
        return out


class _Sum:
    """The sum of ``k`` streams that lag by different amounts (a residual block's branch and its
    residual; a stage's residual blocks): ``push(*parts)`` returns ``(p0 + p1) + p2 …`` (operand
    order, as ``forward`` adds them) over the samples every operand has, in a new tensor written
    piece by piece from each operand's kept samples and new ones, and keeps what is beyond that.
    Unlike an :class:`_Align` queue it never concatenates a stream (the residual is ahead of its
    branch, and two of a stage's three blocks ahead of the third, on every push)."""

    def __init__(self, k: int) -> None:
        self.left: list[Tensor | None] = [None] * k

    def _piece(self, j: int, new: Tensor, a: int, b: int) -> Tensor:
        """Operand ``j``'s samples ``[a, b)`` of its kept ++ new samples (within one of them)."""
        left = self.left[j]
        n_left = 0 if left is None else _len(left)
        return _view(left, a, b) if b <= n_left else _view(new, a - n_left, b - n_left)  # type: ignore[arg-type]

    def push(self, *parts: Tensor) -> Tensor:
        if len(parts) == 1:  # one operand is always complete: its own sum
            return parts[0]
        kept = [0 if q is None else _len(q) for q in self.left]
        n = min(k + _len(p) for k, p in zip(kept, parts))
        cuts = sorted({0, n, *(k for k in kept if 0 < k < n)})
        p0 = parts[0]
        z = torch.empty((*p0.shape[:-1], n), dtype=p0.dtype, device=p0.device,
                        memory_format=torch.channels_last if p0.dim() == 4 else torch.contiguous_format)
        for a, b in zip(cuts, cuts[1:]):
            zs = _view(z, a, b)
            torch.add(self._piece(0, p0, a, b), self._piece(1, parts[1], a, b), out=zs)
            for j in range(2, len(parts)):
                zs.add_(self._piece(j, parts[j], a, b))
        for j, (k, p) in enumerate(zip(kept, parts)):
            left = self.left[j]
            self.left[j] = _cat(_span(left, n), p) if k > n else (_span(p, n - k) if k < n else p)  # type: ignore[arg-type]
        return z


class _StreamResBlock:
    """:class:`~spiritlm.vocoder.generator.ResBlock1` on a stream: for each dilation,
    ``x += c2(lrelu(c1(lrelu(x))))``, the residual ``x`` kept until the branch catches up."""

    def __init__(self, block: ResBlock1, layout: _Layout) -> None:
        self.c1 = [_StreamConv(c, layout) for c in block.convs1]
        self.c2 = [_StreamConv(c, layout) for c in block.convs2]
        self.res = [_Sum(2) for _ in block.convs1]

    def count(self, n: int) -> int:
        for c1, c2 in zip(self.c1, self.c2):
            n = c2.count(c1.count(n))
        return n

    def push(self, x: Tensor, first: Tensor, final: bool) -> Tensor:
        """``x`` the next samples of the block's input, ``first`` = ``lrelu(x)`` (shared by a stage's blocks)."""
        for i, (c1, c2, res) in enumerate(zip(self.c1, self.c2, self.res)):
            h = c1.push(first if i == 0 else F.leaky_relu(x, LRELU_SLOPE), final)
            y = c2.push(F.leaky_relu(h, LRELU_SLOPE, inplace=True), final)
            x = res.push(y, x)
        return x


class StreamingGenerator:
    """A :class:`~spiritlm.vocoder.generator.HifiGANGenerator` run incrementally on one utterance.

    Args:
        gen: the generator (eval mode; with folded weights on a CPU it runs channels-last, as
            :meth:`~spiritlm.vocoder.generator.HifiGANGenerator.forward` does).
        source_convs: ``UnitHifiGAN.source_convs`` (the harmonic source's strided convolution
            per stage) or None.
        dtype, device: of the generator's input.

    ``push(x, excitation, final)``: ``x`` ``[1, C_in, n]`` the next ``n`` final frames of the
    generator's input (25 Hz), ``excitation`` ``[1, 1, n · hop]`` their harmonic-source
    excitation (16 kHz; None without a source); returns the audio samples ``[N]`` that are now
    final. Over a whole utterance the concatenated outputs are ``forward`` of the concatenated
    frames (to float rounding), ``frames · hop`` samples, the last ones at ``final=True``.

    >>> g = HifiGANGenerator(8, 16, [4, 2], [8, 4], [3], [[1, 3]]).eval()
    >>> x = torch.randn(1, 8, 12)                    # 12 frames → 12 · 8 samples
    >>> s = StreamingGenerator(g, None, x.dtype, x.device)
    >>> with torch.no_grad():
    ...     parts = [s.push(x[..., :8], None, False), s.push(x[..., 8:], None, True)]
    ...     whole = g(x)[0, 0]
    >>> [len(p) for p in parts], s.final_samples(8), bool(torch.allclose(torch.cat(parts), whole, atol=1e-6))
    ([14, 82], 14, True)
    """

    def __init__(self, gen: HifiGANGenerator, source_convs: nn.ModuleList | None, dtype: torch.dtype, device: torch.device) -> None:
        lay = _Layout(gen.channels_last(torch.empty(1, 1, 0, device=device)), dtype, device)
        self.layout = lay
        self.hop = 1
        for u in gen.upsample_rates:
            self.hop *= u
        self.num_kernels = gen.num_kernels
        self.pre = _StreamConv(gen.conv_pre, lay)
        self.ups = [_StreamConvT(m, lay) for m in gen.ups]  # type: ignore[arg-type]
        self.blocks = [[_StreamResBlock(gen.resblocks[i * gen.num_kernels + j], lay) for j in range(gen.num_kernels)]  # type: ignore[arg-type]
                       for i in range(gen.num_upsamples)]
        self.mean = [_Sum(gen.num_kernels) for _ in gen.ups]
        plain = _Layout(False, dtype, device)  # the excitation is [1, 1, T] (1-D conv, as forward's inject)
        self.src = None if source_convs is None else [_StreamConv(c, lay, plain) for c in source_convs]
        self.inject = [_Align(2) for _ in gen.ups]
        self.post = _StreamConv(gen.conv_post, lay)
        # once any output is final no layer's count is clamped at 0, and each is affine in the
        # frames (strides divide the hop): final_samples(n) = n·hop - lag from there on
        self._linear_from = 1
        while self._count(self._linear_from) == 0:
            self._linear_from += 1
        self._lag = self._linear_from * self.hop - self._count(self._linear_from)

    def final_samples(self, frames: int) -> int:
        """Output samples final once ``frames`` input frames (and their excitation) are pushed,
        before the end of the stream: what ``push`` has returned in all by then."""
        if frames >= self._linear_from:
            return frames * self.hop - self._lag
        return self._count(frames)

    def _count(self, frames: int) -> int:
        n = self.pre.count(frames)
        for i, ups in enumerate(self.ups):
            n = ups.count(n)
            if self.src is not None:
                n = min(n, self.src[i].count(frames * self.hop))
            n = min(b.count(n) for b in self.blocks[i])
        return self.post.count(n)

    def push(self, x: Tensor, excitation: Tensor | None, final: bool) -> Tensor:
        if (excitation is None) != (self.src is None):
            raise ValueError("give an excitation exactly when the generator has source convolutions")
        o = self.pre.push(self.layout.enter(x), final)
        for i, ups in enumerate(self.ups):
            o = ups.push(F.leaky_relu(o, LRELU_SLOPE), final)
            if self.src is not None:
                e = self.src[i].push(excitation, final)
                o, e = self.inject[i].push(o, e, fit=final)
                o = o.add_(e)  # o: the transposed conv's own output
            first = F.leaky_relu(o, LRELU_SLOPE)
            o = self.mean[i].push(*(b.push(o, first, final) for b in self.blocks[i])).div_(self.num_kernels)  # a new tensor
        o = torch.tanh(self.post.push(F.leaky_relu(o), final))  # slope 0.01, as forward
        return o.reshape(-1)
