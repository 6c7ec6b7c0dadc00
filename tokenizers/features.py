"""Frame-level speech features for the unit tokenizer, at 25 Hz (hop 640 samples at 16 kHz).

Three backends share one interface, :class:`FeatureBackend`: a batch of 16 kHz waveforms in,
``(features, lengths)`` out, where ``features`` is float32 ``(B, frames, dim)`` (zero past each
utterance's end) and ``lengths`` the number of valid frames per utterance ``(B,)``.

* ``hubert``: a transformers :class:`~transformers.HubertModel` from a local directory; the
  features are the output of transformer layer ``L`` (1-based, equal to fairseq's
  ``extract_features(output_layer=L)``). Spirit LM uses layer 11 of mHuBERT-25Hz.
* ``fairseq-hubert``: a fairseq HuBERT checkpoint file, converted on load into the ``hubert``
  backend (see :mod:`spiritlm.tokenizers.fairseq_hubert`).
* ``mfcc``: 13 MFCCs + deltas + delta-deltas at 100 Hz (25 ms windows), cepstral mean and
  variance normalisation per utterance, averaged over groups of 4 frames to 25 Hz. It has no
  weights; it is the embedded default where no pretrained HuBERT can be downloaded.

Batched extraction with padding gives the frames of one-at-a-time extraction: every backend
only lets an utterance's frames depend on that utterance's samples.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from spiritlm.constants import SAMPLE_RATE, STREAM_RATES
from .utils import resolve_device
from ..tensors import length_mask, pad_batch

#: (kernel, stride) of the convolutional front end of a 25 Hz HuBERT: the 50 Hz chain of
#: HuBERT base plus one more stride-2 layer; 640 samples per frame.
HUBERT_25HZ_CONV = ((10, 5), (3, 2), (3, 2), (3, 2), (3, 2), (2, 2), (2, 2), (2, 2))


def conv_chain_frames(num_samples: int, layers: Sequence[tuple[int, int]] = HUBERT_25HZ_CONV) -> int:
    """Number of output frames of a chain of unpadded 1-D convolutions ``(kernel, stride)``.

    With the default chain this is HuBERT-25Hz's frame count: 228 frames for 146,160 samples.
    """
    n = int(num_samples)
    for kernel, stride in layers:
        n = (n - kernel) // stride + 1
        if n <= 0:
            return 0
    return n


@dataclass
class FeatureConfig:
    """Which feature backend the unit tokenizer uses.

    Attributes:
        backend: ``"mfcc"``, ``"hubert"`` (transformers directory) or ``"fairseq-hubert"``
            (fairseq checkpoint file).
        checkpoint: path of the HuBERT directory / checkpoint file (unused for ``mfcc``).
        layer: transformer layer whose output is used (1-based; Spirit LM: 11).
        normalize: zero-mean unit-variance normalisation of each waveform before a HuBERT
            (needed by models trained with ``normalize=True``; mHuBERT-25Hz: False).
        mfcc: options of the ``mfcc`` backend.
    """

    backend: str = "mfcc"
    checkpoint: str | None = None
    layer: int = 11
    normalize: bool = False
    mfcc: MfccConfig = field(default_factory=lambda: MfccConfig())

    @classmethod
    def from_dict(cls, d: dict) -> FeatureConfig:
        d = dict(d)
        d["mfcc"] = MfccConfig(**d.get("mfcc", {}))
        return cls(**d)


@dataclass
class MfccConfig:
    """Options of the MFCC backend (all at 16 kHz).

    Attributes:
        n_mfcc: cepstral coefficients per 10 ms frame (c0 included).
        n_mels: mel bands.
        deltas: append first and second order deltas (x3 the dimension).
        cmvn: per-utterance mean and variance normalisation over its valid frames.
        pool: ``"mean"`` averages the four 100 Hz frames of a 25 Hz frame; ``"stack"``
            concatenates them (x4 the dimension).
    """

    n_mfcc: int = 13
    n_mels: int = 40
    deltas: bool = True
    cmvn: bool = True
    pool: str = "mean"


class FeatureBackend(torch.nn.Module):
    """Audio batch -> frames at 25 Hz.

    Subclasses implement :meth:`forward`. ``dim`` is the feature dimension.
    """

    dim: int
    frame_rate: float = STREAM_RATES["hubert"]

    def num_frames(self, num_samples: int) -> int:
        """Frames produced for ``num_samples`` samples at 16 kHz."""
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        for t in list(self.parameters()) + list(self.buffers()):
            return t.device
        return torch.device("cpu")

    def forward(self, wavs: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Args: ``wavs`` float ``(B, samples)`` zero-padded, ``lengths`` ``(B,)`` samples.

        Returns ``(features (B, frames, dim) float32, lengths (B,) frames)``.
        """
        raise NotImplementedError

    @torch.inference_mode()
    def extract(self, wavs: Sequence[np.ndarray | torch.Tensor]) -> list[np.ndarray]:
        """Features of each waveform (16 kHz, float) as float32 arrays ``(frames_i, dim)``."""
        batch, lengths = pad_batch(wavs)
        feats, flen = self(batch.to(self.device), lengths.to(self.device))
        feats = feats.float().cpu().numpy()
        return [feats[i, : int(n)] for i, n in enumerate(flen.cpu())]


def length_buckets(lengths: Sequence[float | None], budget: float, max_items: int) -> list[list[int]]:
    """Groups item indices into batches of similar length (length bucketing).

    Items are sorted by length, longest first (a run meets its largest batch at once); a batch
    takes items while ``len(batch) * longest <= budget`` (the padded size it computes) and
    ``len(batch) <= max_items``; an item longer than ``budget`` gets a batch of its own. Items
    of unknown length (None) come last, ``max_items`` at a time, in their given order.

    Args:
        lengths: length of each item (any unit: samples, seconds), or None.
        budget: padded size of a batch, in the unit of ``lengths``.
        max_items: items per batch at most.

    Returns:
        Lists of indices into ``lengths``; every index appears once.
    """
    max_items = max(1, int(max_items))
    known = sorted((i for i, n in enumerate(lengths) if n is not None), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    cur: list[int] = []
    for i in known:
        longest = lengths[cur[0]] if cur else lengths[i]
        if cur and (len(cur) >= max_items or (len(cur) + 1) * longest > budget):
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    unknown = [i for i, n in enumerate(lengths) if n is None]
    batches += [unknown[k : k + max_items] for k in range(0, len(unknown), max_items)]
    return batches


# ---------------------------------------------------------------------------------------------
# MFCC
# ---------------------------------------------------------------------------------------------


class MfccBackend(FeatureBackend):
    """MFCC (+deltas) pooled to 25 Hz; frames as a 25 Hz HuBERT (:func:`conv_chain_frames`).

    10 ms hop, 25 ms Hann windows without centring; each waveform gets 480 zeros appended so
    that the last 25 Hz frame has its four 100 Hz frames. Frames past an utterance's valid end
    are replaced by its last valid frame before deltas, so batching changes nothing.
    """

    HOP = 160
    WIN = 400
    GROUP = 4  # 100 Hz frames per 25 Hz frame

    def __init__(self, cfg: MfccConfig | None = None):
        super().__init__()
        import torchaudio

        self.cfg = cfg or MfccConfig()
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=SAMPLE_RATE, n_fft=self.WIN, win_length=self.WIN, hop_length=self.HOP,
            n_mels=self.cfg.n_mels, f_min=20.0, center=False, power=2.0,
        )
        dct = torchaudio.functional.create_dct(self.cfg.n_mfcc, self.cfg.n_mels, norm="ortho")
        self.register_buffer("dct", dct, persistent=False)  # (n_mels, n_mfcc)
        d = self.cfg.n_mfcc * (3 if self.cfg.deltas else 1)
        self.dim = d * (self.GROUP if self.cfg.pool == "stack" else 1)
        if self.cfg.pool not in ("mean", "stack"):
            raise ValueError(f"MfccConfig.pool must be 'mean' or 'stack', got {self.cfg.pool!r}")

    def num_frames(self, num_samples: int) -> int:
        return conv_chain_frames(num_samples)

    def forward(self, wavs, lengths):
        import torchaudio

        B = wavs.shape[0]
        pad = 480
        wavs = torch.nn.functional.pad(wavs.float(), (0, pad))
        mel = self.mel(wavs)  # (B, n_mels, M)
        mfcc = torch.matmul(torch.log(mel + 1e-6).transpose(1, 2), self.dct)  # (B, M, n_mfcc)
        n25 = torch.tensor([self.num_frames(int(n)) for n in lengths.cpu()], device=wavs.device)
        n100 = n25 * self.GROUP
        T25 = int(n25.max()) if B else 0
        M = T25 * self.GROUP
        if mfcc.shape[1] < M:  # cannot happen with the 480-sample pad; kept as a guard
            mfcc = torch.nn.functional.pad(mfcc, (0, 0, 0, M - mfcc.shape[1]))
        mfcc = mfcc[:, :M]
        # replicate each utterance's last valid frame over its padding
        idx = torch.minimum(torch.arange(M, device=wavs.device)[None, :], (n100 - 1).clamp(min=0)[:, None])
        idx = idx[:, :, None].expand(-1, -1, mfcc.shape[2])
        mfcc = torch.gather(mfcc, 1, idx)
        feats = mfcc
        if self.cfg.deltas:
            # deltas over (B, n_mfcc, M); the first deltas are re-padded the same way so the
            # second ones see an utterance's own frames only
            d1 = torchaudio.functional.compute_deltas(mfcc.transpose(1, 2), win_length=5).transpose(1, 2)
            d1 = torch.gather(d1, 1, idx)
            d2 = torchaudio.functional.compute_deltas(d1.transpose(1, 2), win_length=5).transpose(1, 2)
            feats = torch.cat([mfcc, d1, d2], dim=2)  # (B, M, 3 n_mfcc)
        mask = length_mask(n100, M).unsqueeze(-1).float()
        if self.cfg.cmvn:
            count = mask.sum(1, keepdim=True).clamp(min=1)
            mean = (feats * mask).sum(1, keepdim=True) / count
            var = (((feats - mean) * mask) ** 2).sum(1, keepdim=True) / count
            feats = (feats - mean) / torch.sqrt(var + 1e-5)
        feats = feats * mask
        feats = feats.reshape(B, T25, self.GROUP, -1)
        feats = feats.mean(2) if self.cfg.pool == "mean" else feats.flatten(2)
        return feats.float(), n25


# ---------------------------------------------------------------------------------------------
# HuBERT (transformers)
# ---------------------------------------------------------------------------------------------


#: Names accepted for a backend's compute precision (``--precision``): fp32 or bf16 autocast.
PRECISIONS = {"fp32": None, "float32": None, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def parse_precision(precision: str | None) -> torch.dtype | None:
    """``"fp32"``/``"float32"``/None -> None (full precision); ``"bf16"``/``"bfloat16"`` -> ``torch.bfloat16``."""
    if precision is None:
        return None
    try:
        return PRECISIONS[str(precision).lower()]
    except KeyError:
        raise ValueError(f"precision must be fp32 or bf16, got {precision!r}") from None


def fold_weight_norm(module: torch.nn.Module) -> int:
    """Replaces every weight-normalised 1-D convolution in ``module`` by a plain one (in place).

    HuBERT's positional convolution keeps ``weight = g * v / ||v||`` as a parametrisation (or
    the older ``weight_g``/``weight_v`` hook) that is recomputed at every forward; for inference
    the product is computed once. The convolution is swapped for a new ``Conv1d`` rather than
    un-parametrised, because ``remove_parametrizations`` edits a class that deep copies of the
    module share. Returns the number of convolutions folded.
    """
    from torch.nn.utils import parametrize

    n = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            normed = parametrize.is_parametrized(child, "weight") or hasattr(child, "weight_g")
            if not (normed and isinstance(child, torch.nn.Conv1d)):
                continue
            with torch.no_grad():
                w = child.weight.detach().clone()
                plain = torch.nn.Conv1d(child.in_channels, child.out_channels, child.kernel_size, child.stride,
                                        child.padding, child.dilation, child.groups, child.bias is not None,
                                        child.padding_mode, device=w.device, dtype=w.dtype)
                plain.weight.copy_(w)
                if child.bias is not None:
                    plain.bias.copy_(child.bias)
            setattr(parent, name, plain.train(child.training))
            n += 1
    return n


class HubertBackend(FeatureBackend):
    """Output of one transformer layer of a transformers ``HubertModel``, batched with padding masks.

    Args:
        model: the model (eval mode is set here); its transformer is truncated after ``layer``
            and the positional convolution's weight norm is folded (:func:`fold_weight_norm`).
        layer: 1-based transformer layer (``hidden_states[layer]`` in transformers' terms, equal
            to fairseq's ``extract_features(output_layer=layer)``; for a layer-norm-first model
            the last layer comes with the final layer norm applied, as transformers does).
        normalize: per-utterance zero-mean unit-variance normalisation of the waveform.
        precision: ``"fp32"`` (default: transformers' own forward, features equal to
            transformers' and fairseq's to float rounding) or ``"bf16"``: the matrix products
            (convolutions, linears, attention) in bfloat16 with weights cast once and cached,
            everything that normalises or accumulates across layers in float32 (the front end's
            group/layer norm statistics, every layer norm, the residual stream, the returned
            features and so the quantizer's distances). bf16 is ~2x faster on CPUs with
            AVX512-BF16/AMX and on GPUs; on HuBERT-base-25Hz (random weights, k-means 500 fitted
            on speech features) 100% of the real LibriSpeech file's units and 99.87% of 50
            synthetic utterances' equal fp32's (``benchmarks/bench_units_vs_reference.py``).

    Batching gives the frames of one-at-a-time extraction (up to float rounding):

    * the convolutions are unpadded, so a valid output frame only sees its own utterance's
      samples; frames past an utterance's end (:meth:`num_frames`) are discarded;
    * a group-norm front end (HuBERT base, mHuBERT-25Hz: ``feat_extract_norm="group"``) normalises
      each channel of the first convolution over time, which would mix in the padding: that
      norm is computed here over each utterance's valid frames only (a masked group norm);
      a layer-norm front end normalises each frame alone and needs nothing;
    * the transformer gets the attention mask, and transformers zeroes the padded frames
      before the positional convolution, as the convolution's own zero padding does for a
      single utterance.
    """

    def __init__(self, model, layer: int, normalize: bool = False, precision: str | None = "fp32"):
        super().__init__()
        n = model.config.num_hidden_layers
        if not 1 <= layer <= n:
            raise ValueError(f"HuBERT layer must be in 1..{n}, got {layer}")
        keep = layer if not model.config.do_stable_layer_norm else min(layer + 1, n)
        model.encoder.layers = torch.nn.ModuleList(list(model.encoder.layers)[:keep])
        fold_weight_norm(model.encoder.pos_conv_embed)
        self.model = model.eval()
        self.layer = layer
        self.normalize = normalize
        self.amp_dtype = parse_precision(precision)
        self._low: dict[str, torch.Tensor] | None = None  # low-precision weight copies (bf16 path)
        self.dim = model.config.hidden_size
        self.conv = list(zip(model.config.conv_kernel, model.config.conv_stride))
        stride = int(np.prod(model.config.conv_stride))
        self.frame_rate = SAMPLE_RATE / stride

    @property
    def precision(self) -> str:
        return "bf16" if self.amp_dtype == torch.bfloat16 else "fp32"

    def set_precision(self, precision: str | None) -> HubertBackend:
        """Switches between ``"fp32"`` and ``"bf16"`` (see the class docstring)."""
        self.amp_dtype = parse_precision(precision)
        self._low = None
        return self

    def _apply(self, fn, recurse=True):  # .to()/.cuda(): the cached low-precision copies are stale
        self._low = None
        return super()._apply(fn, recurse)

    def _w(self, module: torch.nn.Module, name: str = "weight") -> torch.Tensor | None:
        """``module.<name>`` in the compute dtype, cast once per precision/device (the bf16 path)."""
        t = getattr(module, name)
        if t is None or self.amp_dtype is None:
            return t
        if self._low is None:
            self._low = {}
        key = f"{id(module)}.{name}"
        low = self._low.get(key)
        if low is None or low.device != t.device:
            low = self._low[key] = t.detach().to(self.amp_dtype)
        return low

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, layer: int, normalize: bool = False, precision: str | None = "fp32") -> HubertBackend:
        """Loads a transformers HuBERT directory (``config.json`` + weights)."""
        from transformers import HubertModel

        if not os.path.isdir(path):
            raise FileNotFoundError(f"{path}: not a transformers HuBERT directory")
        try:
            model = HubertModel.from_pretrained(str(path))
        except Exception as exc:
            raise ValueError(f"{path}: cannot load a transformers HubertModel ({exc})") from exc
        return cls(model, layer, normalize, precision)

    def num_frames(self, num_samples: int) -> int:
        return conv_chain_frames(num_samples, self.conv)

    def conv_features(self, wavs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The convolutional front end on a padded batch: ``(B, samples)`` -> ``(B, channels, frames)``.

        A group-norm front end's first layer is normalised over each utterance's valid frames
        only (see the class docstring); frames past an utterance's end are garbage to discard.
        Under ``bf16`` the convolutions run in bfloat16 and norm statistics in float32; the
        output is then bfloat16.
        """
        fe = self.model.feature_extractor
        layers = list(fe.conv_layers)
        low = self.amp_dtype
        F = torch.nn.functional

        def conv(layer, x):
            if low is None:
                return layer.conv(x)
            c = layer.conv
            return F.conv1d(x.to(low), self._w(c), self._w(c, "bias"), c.stride)

        if self.model.config.feat_extract_norm == "group":
            first, layers = layers[0], layers[1:]
            x = self._first_layer_group_norm(first, wavs, lengths)
        else:
            x = wavs[:, None, :]
        for layer in layers:
            if low is None:
                x = layer(x)
                continue
            x = conv(layer, x)
            norm = getattr(layer, "layer_norm", None)
            if isinstance(norm, torch.nn.LayerNorm):  # layer-norm front end: per frame, float32
                x = norm(x.float().transpose(-2, -1)).transpose(-2, -1).to(low)
            x = layer.activation(x)
        return x

    def _first_layer_group_norm(self, first, wavs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """First front-end layer of a group-norm HuBERT: conv, group norm over each utterance's valid
        frames, GELU, in one convolution pass.

        The first convolution is linear with one input channel, so each output channel's mean
        and variance over an utterance follow from the mean ``m`` (k) and second moment ``S``
        (k x k) of the utterance's input windows (``k`` = kernel taps): ``mean_c = w_c·m``,
        ``var_c = w_cᵀ S w_c - mean_c²`` (float64). The norm's scale and shift are then folded
        into the convolution's weight and bias, and one convolution (a grouped one over the
        batch) gives the normalised output: no pass over the ``(channels, frames)`` output for
        statistics, masking or the affine. Equal to conv -> masked group norm up to float rounding.
        """
        F = torch.nn.functional
        k, s = self.conv[0]
        c = first.conv
        B, N = wavs.shape
        valid = ((lengths - k) // s + 1).clamp(min=1)  # (B,)
        win = wavs.unfold(-1, k, s).double()  # (B, T0, k) windows
        mask = length_mask(valid.to(wavs.device), win.shape[1]).unsqueeze(-1)
        win = win * mask
        cnt = valid.to(wavs.device, torch.float64)[:, None]
        m = win.sum(1) / cnt  # (B, k)
        S = win.transpose(1, 2) @ win / cnt[:, :, None]  # (B, k, k)
        w = c.weight.double()[:, 0, :]  # (C, k)
        bias = c.bias.double() if c.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64, device=w.device)
        mean = m @ w.T + bias  # (B, C)
        var = torch.einsum("ck,bkl,cl->bc", w, S, w) - (m @ w.T) ** 2  # biased, as GroupNorm
        gn = first.layer_norm
        scale = torch.rsqrt(var.clamp(min=0) + gn.eps) * gn.weight.double()  # (B, C)
        wf = (scale[:, :, None] * w[None]).reshape(-1, 1, k)  # (B*C, 1, k)
        bf = ((bias - mean) * scale + gn.bias.double()).reshape(-1)  # (B*C,)
        dt = self.amp_dtype or torch.float32
        x = F.conv1d(wavs.to(dt).reshape(1, B, N), wf.to(dt), bf.to(dt), stride=s, groups=B)
        return first.activation(x.reshape(B, -1, x.shape[-1]))

    def _linear(self, module: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x.to(self.amp_dtype), self._w(module), self._w(module, "bias"))

    def _qkv(self, a, y: torch.Tensor) -> torch.Tensor:
        """Queries, keys and values of attention module ``a`` in one product: ``(B, T, 3 D)``."""
        key = f"{id(a)}.qkv"
        wb = self._low.get(key) if self._low is not None else None
        if wb is None or wb[0].device != y.device:
            projs = (a.q_proj, a.k_proj, a.v_proj)
            wb = (torch.cat([p.weight.detach() for p in projs]).to(self.amp_dtype),
                  torch.cat([p.bias.detach() for p in projs]).to(self.amp_dtype))
            if self._low is None:
                self._low = {}
            self._low[key] = wb
        return torch.nn.functional.linear(y.to(self.amp_dtype), *wb)

    def _encoder_low(self, feats: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """transformers' HuBERT encoder up to ``self.layer`` with bfloat16 matrix products.

        ``feats`` ``(B, T, C)`` front-end output, ``attn`` bool ``(B, T)``. The residual stream,
        every layer norm and the output are float32; linears, the positional convolution and
        attention (fused SDPA with a key padding mask) run in ``self.amp_dtype``. Same
        operations in the same order as ``HubertEncoder``/``HubertEncoderStableLayerNorm``.
        """
        F = torch.nn.functional
        m = self.model
        fp = m.feature_projection
        x = feats.float()
        if getattr(fp, "feat_proj_layer_norm", True) and hasattr(fp, "layer_norm"):
            x = fp.layer_norm(x)
        h = self._linear(fp.projection, x).float()
        h = h.masked_fill(~attn[:, :, None], 0.0)  # padded frames are zero before the positional conv
        enc = m.encoder
        pc = enc.pos_conv_embed
        p = h.transpose(1, 2)
        if getattr(pc, "batch_norm", None) is not None:
            p = pc.batch_norm(p)
        c = pc.conv
        p = F.conv1d(p.to(self.amp_dtype), self._w(c), self._w(c, "bias"), c.stride, c.padding, c.dilation, c.groups)
        p = pc.activation(pc.padding(p)).transpose(1, 2)
        h = h + p.float()
        stable = m.config.do_stable_layer_norm
        if not stable:
            h = enc.layer_norm(h)
        B, T, _ = h.shape
        key_mask = attn[:, None, None, :]  # (B, 1, 1, T): True = attend
        n = len(enc.layers)
        for layer in list(enc.layers)[: self.layer]:
            a = layer.attention
            y = layer.layer_norm(h) if stable else h
            heads = a.num_heads
            q, k, v = self._qkv(a, y).view(B, T, 3, heads, -1).permute(2, 0, 3, 1, 4)
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, scale=a.scaling)
            o = self._linear(a.out_proj, o.transpose(1, 2).reshape(B, T, -1)).float()
            ff = layer.feed_forward
            if stable:
                h = h + o
                y = layer.final_layer_norm(h)
                u = self._linear(ff.output_dense, ff.intermediate_act_fn(self._linear(ff.intermediate_dense, y)))
                h = h + u.float()
            else:
                h = layer.layer_norm(h + o)
                u = self._linear(ff.output_dense, ff.intermediate_act_fn(self._linear(ff.intermediate_dense, h)))
                h = layer.final_layer_norm(h + u.float())
        if stable and self.layer == n:
            h = enc.layer_norm(h)
        return h

    def forward(self, wavs, lengths):
        wavs = wavs.float()
        if self.normalize:
            mask = length_mask(lengths, wavs.shape[1]).float()
            cnt = mask.sum(1, keepdim=True)
            mean = (wavs * mask).sum(1, keepdim=True) / cnt
            var = (((wavs - mean) * mask) ** 2).sum(1, keepdim=True) / cnt
            wavs = (wavs - mean) / torch.sqrt(var + 1e-7) * mask
        flen = torch.tensor([self.num_frames(int(n)) for n in lengths.cpu()], device=wavs.device)
        T = int(flen.max())
        attn = length_mask(flen, T)  # bool: transformers indexes with ~mask
        feats = self.conv_features(wavs, lengths.to(wavs.device))[:, :, :T].transpose(1, 2)
        if self.amp_dtype is not None:
            x = self._encoder_low(feats, attn)
        else:
            hidden = self.model.feature_projection(feats)
            if isinstance(hidden, tuple):  # older transformers return (hidden, normed features)
                hidden = hidden[0]
            out = self.model.encoder(hidden, attention_mask=attn, output_hidden_states=True, return_dict=True)
            x = out.hidden_states[self.layer]
        x = x.float() * attn.unsqueeze(-1).float()
        return x, flen


def load_backend(cfg: FeatureConfig, device: str | torch.device | None = "cpu", precision: str | None = "fp32") -> FeatureBackend:
    """Builds the backend described by ``cfg`` on ``device``.

    ``precision`` (``"fp32"`` or ``"bf16"``) applies to the HuBERT backends; MFCCs are always
    computed in float32.
    """
    parse_precision(precision)
    if cfg.backend == "mfcc":
        backend: FeatureBackend = MfccBackend(cfg.mfcc)
    elif cfg.backend == "hubert":
        if not cfg.checkpoint:
            raise ValueError("the 'hubert' backend needs a checkpoint directory")
        backend = HubertBackend.from_pretrained(cfg.checkpoint, cfg.layer, cfg.normalize, precision)
    elif cfg.backend == "fairseq-hubert":
        from .fairseq_hubert import load_fairseq_hubert

        if not cfg.checkpoint:
            raise ValueError("the 'fairseq-hubert' backend needs a checkpoint file")
        backend = HubertBackend(load_fairseq_hubert(cfg.checkpoint), cfg.layer, cfg.normalize, precision)
    else:
        raise ValueError(f"unknown feature backend {cfg.backend!r} (choose mfcc, hubert, fairseq-hubert)")
    return backend.to(resolve_device(device)).eval()


def config_dict(cfg) -> dict:
    """Dataclass -> plain dict (nested dataclasses included)."""
    return asdict(cfg)
