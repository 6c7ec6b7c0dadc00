"""Style tokenizer: frame features of a style encoder, pooled over 1 s windows -> 1 Hz tokens.

Encoder backends (``StyleConfig.backend``):

* ``cnn`` (embedded default): log-mel frames at 50 Hz (25 ms windows, hop 320) through a small
  1-D CNN and a projection, trained here with cross-entropy on the corpus' utterance style
  labels (the masked mean of frame embeddings feeds a linear classifier);
* ``w2v2``: a transformers ``Wav2Vec2ForSequenceClassification`` directory (the form of Meta's
  ``style_encoder_w2v2``): last hidden states, then its ``projector``.

Frame embeddings (50 Hz) are averaged over windows of 50 frames (1 s), the last window partial:
``ceil(frames / 50)`` windows, e.g. 10 for 146,160 samples. Tokens are the nearest k-means centre
of each pooled window (``mode="kmeans"``, Meta-format k-means file) or, for ``w2v2``, the
argmax of its classifier (``mode="classifier"``, how Meta's style tokens are made).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from spiritlm.trainer import Recipe, Schedule

from ..tensors import length_mask, pad_batch
from .vqvae import CropBatchSampler
from ..constants import SAMPLE_RATE
from .kmeans import KMeansQuantizer, load_kmeans, save_kmeans

# progress lines: the training recipe's (spiritlm.trainer.Recipe.log), under this module's logger name

HOP = 320  # 50 Hz frames, as wav2vec 2.0
WIN = 400


def num_style_frames(num_samples: int) -> int:
    """50 Hz frames of the CNN encoder (same count as wav2vec 2.0's front end)."""
    return max((int(num_samples) - WIN) // HOP + 1, 0)


@dataclass
class StyleConfig:
    """Style tokenizer settings.

    Attributes:
        backend: ``cnn`` (trained here) or ``w2v2`` (transformers directory).
        checkpoint: the ``w2v2`` directory.
        mode: ``kmeans`` (nearest centre of ``kmeans.pt``) or ``classifier`` (``w2v2`` argmax).
        window_frames: encoder frames pooled per token (50 at 50 Hz = 1 s).
        n_mels: log-mel bands of the CNN.
        channels: CNN width.
        layers: CNN convolution layers (kernel 5).
        embed_dim: dimension of the pooled embeddings.
        labels: style labels the CNN was trained on, in class order.
    """

    backend: str = "cnn"
    checkpoint: str | None = None
    mode: str = "kmeans"
    window_frames: int = 50
    n_mels: int = 64
    channels: int = 128
    layers: int = 3
    embed_dim: int = 64
    labels: list[str] = field(default_factory=list)


class StyleCNN(nn.Module):
    """Log-mel CNN style encoder. ``forward(wavs (B, S), lengths (B,))`` -> ``(emb (B, T, E), frames (B,))``."""

    def __init__(self, cfg: StyleConfig):
        super().__init__()
        import torchaudio

        self.cfg = cfg
        self.mel = torchaudio.transforms.MelSpectrogram(SAMPLE_RATE, n_fft=WIN, win_length=WIN, hop_length=HOP, n_mels=cfg.n_mels, center=False)
        self.register_buffer("feat_mean", torch.zeros(cfg.n_mels))
        self.register_buffer("feat_std", torch.ones(cfg.n_mels))
        convs, c_in = [], cfg.n_mels
        for _ in range(cfg.layers):
            convs.append(nn.Conv1d(c_in, cfg.channels, 5, padding=2))
            c_in = cfg.channels
        self.convs = nn.ModuleList(convs)
        self.proj = nn.Linear(cfg.channels, cfg.embed_dim)
        self.classifier = nn.Linear(cfg.embed_dim, max(len(cfg.labels), 1))

    def logmel(self, wavs: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, T, n_mels)`` raw log-mels (zero past each end) and frame counts."""
        frames = torch.tensor([num_style_frames(int(n)) for n in lengths.cpu()], device=wavs.device)
        T = int(frames.max())
        x = torch.log(self.mel(wavs.float())[:, :, :T] + 1e-6).transpose(1, 2)
        return x * length_mask(frames, T).unsqueeze(-1), frames

    def embed_logmel(self, x: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """``(B, T, n_mels)`` log-mels -> ``(B, T, E)`` frame embeddings (zero on padding)."""
        mask = length_mask(frames, x.shape[1]).unsqueeze(1).to(x.dtype)  # (B, 1, T)
        h = ((x - self.feat_mean) / self.feat_std).transpose(1, 2) * mask
        for conv in self.convs:
            h = F.relu(conv(h)) * mask
        return self.proj(h.transpose(1, 2)) * mask.transpose(1, 2)

    def forward(self, wavs, lengths):
        x, frames = self.logmel(wavs, lengths)
        return self.embed_logmel(x, frames), frames

    def utterance_logits(self, emb: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        m = length_mask(frames, emb.shape[1]).unsqueeze(-1).to(emb.dtype)
        return self.classifier((emb * m).sum(1) / m.sum(1).clamp(min=1))


class W2V2StyleEncoder(nn.Module):
    """``Wav2Vec2ForSequenceClassification`` -> projector outputs at 50 Hz (one utterance at a
    time, waveforms normalised to zero mean and unit variance as its feature extractor does)."""

    def __init__(self, model):
        super().__init__()
        self.model = model.eval()

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> W2V2StyleEncoder:
        from transformers import Wav2Vec2ForSequenceClassification

        if not os.path.isdir(path):
            raise FileNotFoundError(f"{path}: not a transformers wav2vec 2.0 directory")
        return cls(Wav2Vec2ForSequenceClassification.from_pretrained(str(path)))

    def forward(self, wavs, lengths):
        outs = []
        for i, n in enumerate(lengths.cpu()):
            w = wavs[i : i + 1, : int(n)].float()
            w = (w - w.mean()) / torch.sqrt(w.var(unbiased=False) + 1e-7)  # as Wav2Vec2FeatureExtractor
            outs.append(self.model.projector(self.model.wav2vec2(w)[0])[0])
        emb, frames = pad_batch(outs, dtype=None)
        return emb, frames.to(wavs.device)


def pool_windows(emb: torch.Tensor, frames: torch.Tensor, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Averages ``(B, T, E)`` frames over windows of ``window`` frames (last one partial).

    Returns ``(pooled (B, W, E), windows (B,))`` with ``windows = ceil(frames / window)``.
    """
    B, T, E = emb.shape
    W = math.ceil(T / window)
    pad = W * window - T
    m = length_mask(frames, T).to(emb.dtype)
    e = F.pad(emb * m.unsqueeze(-1), (0, 0, 0, pad)).reshape(B, W, window, E).sum(2)
    c = F.pad(m, (0, pad)).reshape(B, W, window).sum(2)
    return e / c.clamp(min=1).unsqueeze(-1), (frames + window - 1) // window


@torch.inference_mode()
def pooled_embeddings(encoder: nn.Module, wavs: Sequence[np.ndarray], window: int = 50) -> list[np.ndarray]:
    """Window-pooled encoder embeddings ``(ceil(frames_i / window), E)`` of 16 kHz waveforms."""
    device = next(encoder.parameters()).device
    batch, lengths = pad_batch(wavs)
    emb, frames = encoder(batch.to(device), lengths.to(device))
    pooled, n = pool_windows(emb, frames, window)
    return [pooled[i, : int(k)].float().cpu().numpy() for i, k in enumerate(n.cpu())]


class StyleTokenizer:
    """Style encoder + window pooling + k-means (or classifier) -> tokens at 1 Hz."""

    def __init__(self, encoder: nn.Module, cfg: StyleConfig, centers: np.ndarray | None = None):
        self.encoder = encoder.eval()
        self.cfg = cfg
        self.quantizer = KMeansQuantizer(centers) if centers is not None else None
        if cfg.mode == "kmeans" and self.quantizer is None:
            raise ValueError("style mode 'kmeans' needs k-means centres")
        if cfg.mode == "classifier" and cfg.backend != "w2v2":
            raise ValueError("style mode 'classifier' is for the w2v2 backend")

    def to(self, device) -> StyleTokenizer:
        self.encoder.to(device)
        if self.quantizer is not None:
            self.quantizer.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    @property
    def num_tokens_vocab(self) -> int:
        if self.cfg.mode == "kmeans":
            return self.quantizer.n_clusters
        return int(self.encoder.model.config.num_labels)

    def pooled(self, wavs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Pooled 1 s embeddings ``(windows_i, E)`` of each 16 kHz waveform."""
        return pooled_embeddings(self.encoder, wavs, self.cfg.window_frames)

    @torch.inference_mode()
    def encode(self, wavs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Style tokens int64 ``(ceil(frames_i / 50),)`` of each waveform."""
        batch, lengths = pad_batch(wavs)
        emb, frames = self.encoder(batch.to(self.device), lengths.to(self.device))
        pooled, n = pool_windows(emb, frames, self.cfg.window_frames)
        if self.cfg.mode == "classifier":
            codes = self.encoder.model.classifier(pooled).argmax(-1)
        else:
            codes = self.quantizer(pooled)
        return [codes[i, : int(k)].cpu().numpy().astype(np.int64) for i, k in enumerate(n.cpu())]

    def save(self, directory: str | os.PathLike) -> None:
        from safetensors.torch import save_file

        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "style_config.json"), "w") as f:
            json.dump(asdict(self.cfg), f, indent=1)
        if self.cfg.backend == "cnn":
            save_file({k: v.contiguous() for k, v in self.encoder.state_dict().items() if not k.startswith("mel.")}, os.path.join(directory, "encoder.safetensors"))
        if self.quantizer is not None:
            save_kmeans(os.path.join(directory, "kmeans.pt"), self.quantizer.centers.cpu().numpy())

    @classmethod
    def load(cls, directory: str | os.PathLike) -> StyleTokenizer:
        from safetensors.torch import load_file

        path = os.path.join(directory, "style_config.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: not a style tokenizer directory")
        with open(path) as f:
            cfg = StyleConfig(**json.load(f))
        if cfg.backend == "cnn":
            enc: nn.Module = StyleCNN(cfg)
            missing, unexpected = enc.load_state_dict(load_file(os.path.join(directory, "encoder.safetensors")), strict=False)
            missing = [k for k in missing if not k.startswith("mel.")]
            if missing or unexpected:
                raise ValueError(f"{directory}: style encoder weights do not match (missing {missing}, unexpected {unexpected})")
        elif cfg.backend == "w2v2":
            enc = W2V2StyleEncoder.from_pretrained(cfg.checkpoint)
        else:
            raise ValueError(f"{path}: unknown style backend {cfg.backend!r}")
        km = os.path.join(directory, "kmeans.pt")
        centers = load_kmeans(km) if os.path.isfile(km) else None
        return cls(enc, cfg, centers)


# ---------------------------------------------------------------------------------------------
# Training the CNN encoder
# ---------------------------------------------------------------------------------------------


@dataclass
class StyleTrainConfig:
    """Style encoder training.

    Attributes:
        steps: optimiser steps.
        batch_size: crops per step.
        crop_frames: crop length in 50 Hz frames.
        lr: Adam learning rate.
        seed: random seed.
        log_every: steps between log lines.
        num_workers: DataLoader processes reading the crops (0: the training process).
    """

    steps: int = 300
    batch_size: int = 16
    crop_frames: int = 150
    lr: float = 1e-3
    seed: int = 0
    log_every: int = 50
    num_workers: int = 0


@torch.no_grad()
def cnn_logmels(cfg: StyleConfig, wavs: Sequence[np.ndarray], batch_size: int = 16) -> list[np.ndarray]:
    """The CNN encoder's raw log-mels ``(frames_i, n_mels)`` float32 of 16 kHz waveforms (what
    :func:`train_style_cnn` trains on; a frame depends on its own samples only, so the batching
    does not change them)."""
    with torch.random.fork_rng():  # building the encoder draws weights: leave the global RNG alone
        enc = StyleCNN(cfg)
    out = []
    for i in range(0, len(wavs), batch_size):
        batch, lengths = pad_batch(wavs[i : i + batch_size])
        x, frames = enc.logmel(batch, lengths)
        out += [x[j, : int(n)].numpy() for j, n in enumerate(frames)]
    return out


class MelCropDataset(torch.utils.data.Dataset):
    """Style CNN training crops: item ``(i, start)`` -> ``(x (crop, n_mels), frames, label)``:
    ``mels[i][start : start + crop]`` zero-padded to ``crop`` frames, its frame count, ``labels[i]``."""

    def __init__(self, mels: Sequence[np.ndarray], labels: Sequence[int], crop: int, n_mels: int):
        self.mels, self.labels, self.crop, self.n_mels = mels, labels, int(crop), int(n_mels)

    def __len__(self) -> int:
        return len(self.mels)

    def __getitem__(self, key: tuple[int, int]):
        i, s = key
        crop = np.array(self.mels[i][s : s + self.crop], dtype=np.float32)  # a copy: the shards are read-only
        x = torch.zeros(self.crop, self.n_mels)
        x[: crop.shape[0]] = torch.from_numpy(crop)
        return x, int(crop.shape[0]), int(self.labels[i])


class MelCropBatchSampler(CropBatchSampler):
    """``steps`` batches of ``(utterance, start)`` keys for :class:`MelCropDataset`, drawn with
    ``numpy.random.default_rng(seed)``: the batch's utterances uniformly, then each one's start
    uniformly among ``0 .. max(frames_i - crop, 0)`` (the style CNN's draw order, which differs
    from the VQ-VAE's crop-by-crop order)."""

    def __iter__(self):
        rng = np.random.default_rng(self.seed)
        for _ in range(self.steps):
            idx = rng.integers(len(self.lengths), size=self.batch_size)
            yield [(int(i), int(rng.integers(0, max(self.lengths[i] - self.crop, 0) + 1))) for i in idx]


def train_style_cnn(wavs: Sequence[np.ndarray] | None, labels: Sequence[str], cfg: StyleConfig, tcfg: StyleTrainConfig,
                    mels: Sequence[np.ndarray] | None = None) -> tuple[StyleCNN, list[dict]]:
    """Trains :class:`StyleCNN` to classify utterance style labels from random crops (:class:`StyleCNNRecipe`).

    ``mels``: the training log-mels (:func:`cnn_logmels`, e.g. memory-mapped shards), read one
    utterance at a time for the feature statistics (float64 sums), then as crops through a
    DataLoader (``tcfg.num_workers`` processes); None: computed from ``wavs`` and held in memory.
    """
    recipe = StyleCNNRecipe(wavs, labels, cfg, tcfg, mels)
    recipe.run()
    return recipe.model.eval(), recipe.records


class StyleCNNRecipe(Recipe):
    """The style CNN's training on the trainer skeleton (:class:`spiritlm.trainer.Recipe`): the
    feature statistics of the training log-mels, then Adam on the utterance-label cross-entropy of
    random crops; a record (mean loss and accuracy) every ``log_every`` steps and at the last."""

    name = "style cnn"
    progress = False  # the tokenizer's log lines carry the time left (tokenizers/train.py's stage clock)

    def __init__(self, wavs, labels: Sequence[str], cfg: StyleConfig, tcfg: StyleTrainConfig, mels=None) -> None:
        super().__init__()
        self.wavs, self.labels, self.cfg, self.tcfg, self.mels = wavs, labels, cfg, tcfg, mels

    def setup(self) -> None:
        cfg, tcfg = self.cfg, self.tcfg
        torch.manual_seed(tcfg.seed)
        classes = sorted(set(self.labels))
        cfg.labels = classes
        self.model = StyleCNN(cfg)
        mels = cnn_logmels(cfg, self.wavs) if self.mels is None else self.mels
        lengths = self._set_feature_stats(mels)
        y = [classes.index(lab) for lab in self.labels]
        self.loader = torch.utils.data.DataLoader(
            MelCropDataset(mels, y, tcfg.crop_frames, cfg.n_mels),
            batch_sampler=MelCropBatchSampler(lengths, tcfg.crop_frames, tcfg.batch_size, tcfg.steps, tcfg.seed),
            num_workers=tcfg.num_workers, generator=torch.Generator().manual_seed(tcfg.seed))
        self.opt = torch.optim.Adam(self.model.parameters(), lr=tcfg.lr)
        self.records: list[dict] = []
        self.schedule = Schedule(max_steps=tcfg.steps, end=tcfg.steps, log_every=tcfg.log_every, save_at_end=False)

    def _set_feature_stats(self, mels) -> list[int]:
        """Mean and (unbiased) std of every training frame into the model, one utterance at a time; returns the lengths."""
        n_mels = self.cfg.n_mels
        total, sq, count, lengths = np.zeros(n_mels), np.zeros(n_mels), 0, []
        for m in mels:
            m = np.asarray(m, dtype=np.float64)
            lengths.append(m.shape[0])
            total += m.sum(0)
            sq += (m**2).sum(0)
            count += m.shape[0]
        mean = total / max(count, 1)
        std = np.sqrt(np.maximum(sq - count * mean**2, 0) / max(count - 1, 1))
        with torch.no_grad():
            self.model.feat_mean.copy_(torch.from_numpy(mean).float())
            self.model.feat_std.copy_(torch.from_numpy(std).float().clamp(min=1e-3))
        return lengths

    def on_train_start(self) -> None:
        self.t0, self.batches, self.agg, self.acc = time.time(), iter(self.loader), 0.0, 0.0
        self.model.train()

    def train_step(self) -> None:
        x, frames, yb = next(self.batches)
        emb = self.model.embed_logmel(x, frames)
        logits = self.model.utterance_logits(emb, frames)
        loss = F.cross_entropy(logits, yb)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.agg += float(loss.detach())
        self.acc += float((logits.argmax(-1) == yb).float().mean())

    def log_train(self) -> None:
        step, every = self.step, self.tcfg.log_every
        n = every if step % every == 0 else step % every
        rec = {"step": step, "loss": self.agg / n, "accuracy": self.acc / n, "elapsed_s": round(time.time() - self.t0, 2)}
        self.records.append(rec)
        self.log(f"step {step}: loss={rec['loss']:.4f} accuracy={rec['accuracy']:.3f}")
        self.agg, self.acc = 0.0, 0.0
