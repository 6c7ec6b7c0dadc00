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

from ..constants import SAMPLE_RATE
from .utils import lengths_to_mask, pad_batch, resolve_device

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
    frame_rate: float = 25.0

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
        mask = lengths_to_mask(n100, M).unsqueeze(-1).float()
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


class HubertBackend(FeatureBackend):
    """Output of one transformer layer of a transformers ``HubertModel``.

    Args:
        model: the model (eval mode is set here); its transformer is truncated after ``layer``.
        layer: 1-based transformer layer (``hidden_states[layer]`` in transformers' terms, equal
            to fairseq's ``extract_features(output_layer=layer)``; for a layer-norm-first model
            the last layer comes with the final layer norm applied, as transformers does).
        normalize: per-utterance zero-mean unit-variance normalisation of the waveform.

    Models with group-norm feature extractors (HuBERT base) run the convolutional front end one
    utterance at a time (group norm would mix in the padding); the transformer runs batched
    with an attention mask.
    """

    def __init__(self, model, layer: int, normalize: bool = False):
        super().__init__()
        n = model.config.num_hidden_layers
        if not 1 <= layer <= n:
            raise ValueError(f"HuBERT layer must be in 1..{n}, got {layer}")
        keep = layer if not model.config.do_stable_layer_norm else min(layer + 1, n)
        model.encoder.layers = torch.nn.ModuleList(list(model.encoder.layers)[:keep])
        self.model = model.eval()
        self.layer = layer
        self.normalize = normalize
        self.dim = model.config.hidden_size
        self.conv = list(zip(model.config.conv_kernel, model.config.conv_stride))
        stride = int(np.prod(model.config.conv_stride))
        self.frame_rate = SAMPLE_RATE / stride

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, layer: int, normalize: bool = False) -> HubertBackend:
        """Loads a transformers HuBERT directory (``config.json`` + weights)."""
        from transformers import HubertModel

        if not os.path.isdir(path):
            raise FileNotFoundError(f"{path}: not a transformers HuBERT directory")
        try:
            model = HubertModel.from_pretrained(str(path))
        except Exception as exc:
            raise ValueError(f"{path}: cannot load a transformers HubertModel ({exc})") from exc
        return cls(model, layer, normalize)

    def num_frames(self, num_samples: int) -> int:
        return conv_chain_frames(num_samples, self.conv)

    def forward(self, wavs, lengths):
        wavs = wavs.float()
        if self.normalize:
            mask = lengths_to_mask(lengths, wavs.shape[1]).float()
            cnt = mask.sum(1, keepdim=True)
            mean = (wavs * mask).sum(1, keepdim=True) / cnt
            var = (((wavs - mean) * mask) ** 2).sum(1, keepdim=True) / cnt
            wavs = (wavs - mean) / torch.sqrt(var + 1e-7) * mask
        flen = torch.tensor([self.num_frames(int(n)) for n in lengths.cpu()], device=wavs.device)
        T = int(flen.max())
        fe = self.model.feature_extractor
        if self.model.config.feat_extract_norm == "group":
            feats = wavs.new_zeros(wavs.shape[0], self.model.config.conv_dim[-1], T)
            for i, n in enumerate(lengths.cpu()):
                f = fe(wavs[i : i + 1, : int(n)])
                feats[i, :, : f.shape[-1]] = f[0]
        else:
            feats = fe(wavs)[:, :, :T]
        feats = feats.transpose(1, 2)
        hidden = self.model.feature_projection(feats)
        if isinstance(hidden, tuple):  # older transformers return (hidden, normed features)
            hidden = hidden[0]
        attn = lengths_to_mask(flen, T)  # bool: transformers indexes with ~mask
        out = self.model.encoder(hidden, attention_mask=attn, output_hidden_states=True, return_dict=True)
        x = out.hidden_states[self.layer]
        x = x * attn.unsqueeze(-1).to(x.dtype)
        return x.float(), flen


def load_backend(cfg: FeatureConfig, device: str | torch.device | None = "cpu") -> FeatureBackend:
    """Builds the backend described by ``cfg`` on ``device``."""
    if cfg.backend == "mfcc":
        backend: FeatureBackend = MfccBackend(cfg.mfcc)
    elif cfg.backend == "hubert":
        if not cfg.checkpoint:
            raise ValueError("the 'hubert' backend needs a checkpoint directory")
        backend = HubertBackend.from_pretrained(cfg.checkpoint, cfg.layer, cfg.normalize)
    elif cfg.backend == "fairseq-hubert":
        from .fairseq_hubert import load_fairseq_hubert

        if not cfg.checkpoint:
            raise ValueError("the 'fairseq-hubert' backend needs a checkpoint file")
        backend = HubertBackend(load_fairseq_hubert(cfg.checkpoint), cfg.layer, cfg.normalize)
    else:
        raise ValueError(f"unknown feature backend {cfg.backend!r} (choose mfcc, hubert, fairseq-hubert)")
    return backend.to(resolve_device(device)).eval()


def config_dict(cfg) -> dict:
    """Dataclass -> plain dict (nested dataclasses included)."""
    return asdict(cfg)
