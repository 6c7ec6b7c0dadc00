"""Pitch VQ-VAE: (normalised log-F0, voicing) at 200 Hz -> 64 codes at 12.5 Hz -> reconstruction.

The recipe of Spirit LM's pitch tokens (after speech-resynthesis' F0 VQ-VAE): a 1-D convolutional
encoder downsampling 16x with stride-2 convolutions and residual blocks, one codebook, and a
mirrored decoder with transposed convolutions. Two quantizers:

* ``ema``: codebook updated by exponential moving averages of assigned encoder outputs
  (k-means in the loop), dead codes (EMA count below a threshold) restarted from random encoder
  outputs of the batch, commitment loss ``beta * ||z - sg(q)||^2``;
* ``simvq``: the codebook is a frozen random basis times one learned linear layer (SimVQ,
  Zhu et al. 2024); loss ``||sg(z) - q||^2 + beta * ||z - sg(q)||^2``.

Shapes: input ``(B, 2, T)`` with ``T`` frames at 200 Hz; codes ``(B, T')`` with ``T'`` obtained
by halving ``T`` (floor) four times, e.g. 1828 frames -> 114 codes; decoder output
``(B, 2, 16 T')``: channel 0 normalised log-F0, channel 1 voicing logits.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from spiritlm.trainer import Recipe, Schedule

# progress lines: the training recipe's (spiritlm.trainer.Recipe.log), under this module's logger name


@dataclass
class VQVAEConfig:
    """Architecture of the pitch VQ-VAE.

    Attributes:
        in_channels: input channels (log-F0, voicing).
        channels: width of the convolutions.
        latent_dim: dimension of codebook vectors.
        codebook_size: number of codes (Spirit LM: 64).
        downsample: temporal downsampling, a power of two (16: 200 Hz -> 12.5 Hz).
        res_depth: residual blocks after each stride-2 convolution (dilations 1, 3, 9, ...).
        quantizer: ``ema`` or ``simvq``.
        ema_decay: EMA decay of the ``ema`` codebook.
        dead_threshold: EMA usage count under which a code is restarted (``ema``).
        commitment: weight of the commitment loss.
        vuv_weight: weight of the voicing cross-entropy in the reconstruction loss.
    """

    in_channels: int = 2
    channels: int = 64
    latent_dim: int = 32
    codebook_size: int = 64
    downsample: int = 16
    res_depth: int = 2
    quantizer: str = "ema"
    ema_decay: float = 0.99
    dead_threshold: float = 0.5
    commitment: float = 0.25
    vuv_weight: float = 1.0


def num_codes(num_frames: int, downsample: int = 16) -> int:
    """Codes for ``num_frames`` 200 Hz frames (repeated floor halving)."""
    n = int(num_frames)
    for _ in range(int(round(math.log2(downsample)))):
        n //= 2
    return n


class ResBlock(nn.Module):
    def __init__(self, c: int, dilation: int):
        super().__init__()
        self.conv1 = nn.Conv1d(c, c, 3, padding=dilation, dilation=dilation)
        self.conv2 = nn.Conv1d(c, c, 1)

    def forward(self, x):
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


def _res_stack(c: int, depth: int) -> nn.Sequential:
    return nn.Sequential(*[ResBlock(c, 3**i) for i in range(depth)])


class EMAQuantizer(nn.Module):
    """Codebook with EMA updates and dead-code restarts. Inputs ``(N, D)`` flattened frames."""

    def __init__(self, size: int, dim: int, decay: float, dead_threshold: float):
        super().__init__()
        self.size, self.dim, self.decay, self.dead_threshold = size, dim, decay, dead_threshold
        self.register_buffer("codebook", torch.zeros(size, dim))
        self.register_buffer("ema_count", torch.zeros(size))
        self.register_buffer("ema_sum", torch.zeros(size, dim))
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    def codes(self, z: torch.Tensor) -> torch.Tensor:
        d = (z**2).sum(1, keepdim=True) - 2 * z @ self.codebook.T + (self.codebook**2).sum(1)[None]
        return d.argmin(1)

    def lookup(self, idx: torch.Tensor) -> torch.Tensor:
        return F.embedding(idx, self.codebook)

    def _random_rows(self, z: torch.Tensor, n: int) -> torch.Tensor:
        idx = torch.randint(0, z.shape[0], (n,), device=z.device)
        return z[idx] + 1e-3 * torch.randn(n, z.shape[1], device=z.device)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        """Returns ``(q straight-through (N, D), codes (N,), loss, stats)``."""
        if self.training and not bool(self.initialised):
            self.codebook.copy_(self._random_rows(z.detach(), self.size))
            self.ema_sum.copy_(self.codebook)
            self.ema_count.fill_(1.0)
            self.initialised.fill_(True)
        idx = self.codes(z.detach())
        q = self.lookup(idx)
        stats: dict = {}
        if self.training:
            with torch.no_grad():
                onehot = F.one_hot(idx, self.size).to(z.dtype)
                self.ema_count.mul_(self.decay).add_(onehot.sum(0), alpha=1 - self.decay)
                self.ema_sum.mul_(self.decay).add_(onehot.T @ z.detach(), alpha=1 - self.decay)
                n = self.ema_count.sum()
                count = (self.ema_count + 1e-5) / (n + self.size * 1e-5) * n  # Laplace smoothing
                self.codebook.copy_(self.ema_sum / count[:, None])
                dead = self.ema_count < self.dead_threshold
                n_dead = int(dead.sum())
                if n_dead:
                    new = self._random_rows(z.detach(), n_dead)
                    self.codebook[dead] = new
                    self.ema_sum[dead] = new
                    self.ema_count[dead] = 1.0
                stats["restarted"] = n_dead
        loss = F.mse_loss(z, q.detach())  # commitment (weighted by the caller)
        q = z + (q - z).detach()
        return q, idx, loss, stats


class SimVQQuantizer(nn.Module):
    """SimVQ: codebook = frozen random basis ``(K, D)`` @ learned linear ``(D, D)``."""

    def __init__(self, size: int, dim: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.size, self.dim = size, dim
        self.register_buffer("basis", torch.randn(size, dim, generator=g) * dim**-0.5)
        self.proj = nn.Linear(dim, dim, bias=False)

    @property
    def codebook(self) -> torch.Tensor:
        return self.proj(self.basis)

    def codes(self, z):
        cb = self.codebook
        d = (z**2).sum(1, keepdim=True) - 2 * z @ cb.T + (cb**2).sum(1)[None]
        return d.argmin(1)

    def lookup(self, idx):
        return F.embedding(idx, self.codebook)

    def forward(self, z):
        cb = self.codebook
        idx = self.codes(z.detach())
        q = F.embedding(idx, cb)
        codebook_loss = F.mse_loss(q, z.detach())
        commit = F.mse_loss(z, q.detach())
        q_st = z + (q - z).detach()
        # the caller weights the returned loss by beta; the codebook term is added unweighted
        return q_st, idx, commit, {"codebook_loss": codebook_loss}


class PitchVQVAE(nn.Module):
    """Encoder -> quantizer -> decoder; see the module docstring for shapes."""

    def __init__(self, cfg: VQVAEConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or VQVAEConfig()
        n_down = int(round(math.log2(cfg.downsample)))
        if 2**n_down != cfg.downsample:
            raise ValueError(f"downsample must be a power of two, got {cfg.downsample}")
        C = cfg.channels
        enc = [nn.Conv1d(cfg.in_channels, C, 3, padding=1)]
        for _ in range(n_down):
            enc += [nn.Conv1d(C, C, 4, stride=2, padding=1), _res_stack(C, cfg.res_depth)]
        enc += [nn.ReLU(), nn.Conv1d(C, cfg.latent_dim, 3, padding=1)]
        self.encoder = nn.Sequential(*enc)
        dec = [nn.Conv1d(cfg.latent_dim, C, 3, padding=1)]
        for _ in range(n_down):
            dec += [_res_stack(C, cfg.res_depth), nn.ConvTranspose1d(C, C, 4, stride=2, padding=1)]
        dec += [nn.ReLU(), nn.Conv1d(C, cfg.in_channels, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)
        if cfg.quantizer == "ema":
            self.quantizer: nn.Module = EMAQuantizer(cfg.codebook_size, cfg.latent_dim, cfg.ema_decay, cfg.dead_threshold)
        elif cfg.quantizer == "simvq":
            self.quantizer = SimVQQuantizer(cfg.codebook_size, cfg.latent_dim)
        else:
            raise ValueError(f"unknown quantizer {cfg.quantizer!r} (ema or simvq)")

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        # voicing enters the encoder as -1/+1 (zero-centred), the decoder predicts 0/1 logits
        return self.encoder(torch.cat([x[:, :1], 2 * x[:, 1:2] - 1, x[:, 2:]], 1))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 2, T)`` -> codes ``(B, T')`` int64."""
        z = self._encode(x)
        B, D, T = z.shape
        return self.quantizer.codes(z.transpose(1, 2).reshape(-1, D)).reshape(B, T)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes ``(B, T')`` -> ``(B, 2, 16 T')`` (log-F0, voicing logits)."""
        q = self.quantizer.lookup(codes).transpose(1, 2)
        return self.decoder(q)

    def forward(self, x: torch.Tensor):
        """Returns ``(reconstruction (B, 2, 16 T'), codes (B, T'), vq_loss, stats)``."""
        z = self._encode(x)
        B, D, T = z.shape
        q, idx, commit, stats = self.quantizer(z.transpose(1, 2).reshape(-1, D))
        vq_loss = self.cfg.commitment * commit + stats.pop("codebook_loss", 0.0)
        q = q.reshape(B, T, D).transpose(1, 2)
        return self.decoder(q), idx.reshape(B, T), vq_loss, stats

    def loss(self, x: torch.Tensor, mask: torch.Tensor | None = None):
        """Training loss on ``x (B, 2, T)`` with valid-frame ``mask (B, T)``.

        Returns ``(loss, parts dict, codes)``.
        """
        rec, codes, vq_loss, stats = self(x)
        T = rec.shape[-1]
        x = x[:, :, :T]
        m = torch.ones_like(x[:, 0]) if mask is None else mask[:, :T].to(x.dtype)
        denom = m.sum().clamp(min=1)
        f0_loss = (((rec[:, 0] - x[:, 0]) ** 2) * m).sum() / denom
        vuv_loss = (F.binary_cross_entropy_with_logits(rec[:, 1], x[:, 1], reduction="none") * m).sum() / denom
        loss = f0_loss + self.cfg.vuv_weight * vuv_loss + vq_loss
        return loss, {"f0": float(f0_loss.detach()), "vuv": float(vuv_loss.detach()), "vq": float(torch.as_tensor(vq_loss).detach()), **stats}, codes


def save_vqvae(model: PitchVQVAE, directory: str | os.PathLike, name: str = "model") -> None:
    """Writes ``<name>.safetensors`` and ``vqvae_config.json`` into ``directory``."""
    from safetensors.torch import save_file

    os.makedirs(directory, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(directory, f"{name}.safetensors"))
    with open(os.path.join(directory, "vqvae_config.json"), "w") as f:
        json.dump(asdict(model.cfg), f, indent=1)


def load_vqvae(directory: str | os.PathLike, name: str = "model") -> PitchVQVAE:
    from safetensors.torch import load_file

    cfg_path = os.path.join(directory, "vqvae_config.json")
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(f"{cfg_path}: VQ-VAE config not found")
    with open(cfg_path) as f:
        cfg = VQVAEConfig(**json.load(f))
    model = PitchVQVAE(cfg)
    model.load_state_dict(load_file(os.path.join(directory, f"{name}.safetensors")))
    return model.eval()


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


@dataclass
class VQVAETrainConfig:
    """Trainer settings.

    Attributes:
        steps: optimiser steps.
        batch_size: crops per step.
        crop_frames: crop length in 200 Hz frames (a multiple of ``downsample``).
        lr: Adam learning rate.
        seed: random seed (crops, initialisation, restarts).
        log_every: steps between log lines (loss, codebook usage, perplexity).
        checkpoint_every: steps between checkpoints (0: final only).
        num_workers: DataLoader processes reading the crops (0: the training process).
    """

    steps: int = 2000
    batch_size: int = 32
    crop_frames: int = 256
    lr: float = 1e-3
    seed: int = 0
    log_every: int = 100
    checkpoint_every: int = 1000
    num_workers: int = 0


def codebook_stats(codes: np.ndarray, size: int) -> dict[str, float]:
    """Usage (fraction of codes used) and perplexity (exp of the code entropy) of a code sample."""
    counts = np.bincount(np.asarray(codes).reshape(-1), minlength=size).astype(np.float64)
    p = counts / max(counts.sum(), 1)
    nz = p[p > 0]
    return {"codebook_usage": float((counts > 0).mean()), "codebook_perplexity": float(np.exp(-(nz * np.log(nz)).sum()))}


class CropDataset(torch.utils.data.Dataset):
    """Training crops of normalised examples ``(2, T_i)`` (read when asked, e.g. from shards).

    Item ``(i, start)`` -> ``(x (2, crop), mask (crop,))`` float32: ``examples[i][:, start :
    start + crop]`` and ones when ``T_i > crop``; else the whole example, its last frame repeated
    to the crop's end, mask ones on its ``T_i`` frames.
    """

    def __init__(self, examples: Sequence[np.ndarray], crop: int):
        self.examples, self.crop = examples, int(crop)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        i, s = key
        x, crop = np.asarray(self.examples[i]), self.crop
        T = x.shape[1]
        xs, ms = np.zeros((2, crop), np.float32), np.zeros(crop, np.float32)
        if T > crop:
            xs[:], ms[:] = x[:, s : s + crop], 1.0
        else:
            xs[:, :T], ms[:T] = x, 1.0
            xs[:, T:] = x[:, -1:]
        return torch.from_numpy(xs), torch.from_numpy(ms)


class CropBatchSampler(torch.utils.data.Sampler):
    """``steps`` batches of ``batch_size`` ``(example, start)`` keys for :class:`CropDataset`.

    Drawn with ``numpy.random.default_rng(seed)``, crop by crop: an example uniformly, then, when
    it is longer than ``crop``, a start uniformly among ``0 .. T_i - crop``. Only the lengths
    ``T_i`` are needed, so the examples stay on disk until a worker reads its crop.
    """

    def __init__(self, lengths: Sequence[int], crop: int, batch_size: int, steps: int, seed: int):
        self.lengths, self.crop, self.batch_size, self.steps, self.seed = [int(n) for n in lengths], int(crop), int(batch_size), int(steps), int(seed)

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        rng = np.random.default_rng(self.seed)
        for _ in range(self.steps):
            keys = []
            for _ in range(self.batch_size):
                i = int(rng.integers(len(self.lengths)))
                T = self.lengths[i]
                keys.append((i, int(rng.integers(0, T - self.crop + 1)) if T > self.crop else 0))
            yield keys


def train_vqvae(
    examples: Sequence[np.ndarray],
    cfg: VQVAEConfig,
    tcfg: VQVAETrainConfig,
    out_dir: str | os.PathLike | None = None,
    device: str = "cpu",
    lengths: Sequence[int] | None = None,
) -> tuple[PitchVQVAE, list[dict]]:
    """Trains a pitch VQ-VAE on normalised examples ``(2, T_i)`` (:class:`VQVAERecipe`).

    Batches come from a ``torch.utils.data.DataLoader`` over :class:`CropDataset` with
    :class:`CropBatchSampler` (``tcfg.num_workers`` processes; the crops, hence the model, are
    the same for any number). ``examples`` may be lazy (read from shards on access); pass
    ``lengths`` (the ``T_i``) so that drawing crops reads nothing.

    Writes ``out_dir/checkpoints/step_<N>/`` (safetensors) every ``checkpoint_every`` steps and
    ``out_dir/train_log.jsonl``; returns the model (eval mode, on CPU) and the log records.
    """
    recipe = VQVAERecipe(examples, cfg, tcfg, out_dir, device, lengths)
    recipe.run()
    return recipe.model.cpu().eval(), recipe.records


class VQVAERecipe(Recipe):
    """The pitch VQ-VAE's training on the trainer skeleton (:class:`spiritlm.trainer.Recipe`):
    Adam with a cosine decay to 5 %; a record (mean losses, codebook usage and perplexity of the
    window's codes) every ``log_every`` steps and at the last; a weights snapshot every
    ``checkpoint_every`` steps (no resume: the tokenizer's shards make a rerun cheap)."""

    name = "pitch vq-vae"
    progress = False  # the tokenizer's log lines carry the time left (tokenizers/train.py's stage clock)

    def __init__(self, examples, cfg: VQVAEConfig, tcfg: VQVAETrainConfig, out_dir=None, device: str = "cpu",
                 lengths: Sequence[int] | None = None) -> None:
        super().__init__()
        self.examples, self.cfg, self.tcfg, self.out_dir, self.device, self.lengths = examples, cfg, tcfg, out_dir, device, lengths

    def setup(self) -> None:
        cfg, tcfg = self.cfg, self.tcfg
        torch.manual_seed(tcfg.seed)
        if tcfg.crop_frames % cfg.downsample:
            raise ValueError("crop_frames must be a multiple of downsample")
        lengths = self.lengths if self.lengths is not None else [np.asarray(x).shape[1] for x in self.examples]
        self.loader = torch.utils.data.DataLoader(
            CropDataset(self.examples, tcfg.crop_frames), batch_sampler=CropBatchSampler(lengths, tcfg.crop_frames, tcfg.batch_size, tcfg.steps, tcfg.seed),
            num_workers=tcfg.num_workers, generator=torch.Generator().manual_seed(tcfg.seed))  # its own generator: the global torch RNG is the model's
        self.model = PitchVQVAE(cfg).to(self.device).train()
        self.opt = torch.optim.Adam(self.model.parameters(), lr=tcfg.lr)
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=max(tcfg.steps, 1), eta_min=tcfg.lr * 0.05)
        self.records: list[dict] = []
        self.logf = open(os.path.join(self.out_dir, "train_log.jsonl"), "w") if self.out_dir else None
        self.schedule = Schedule(max_steps=tcfg.steps, end=tcfg.steps, log_every=tcfg.log_every,
                                 save_every=tcfg.checkpoint_every if self.out_dir else 0, save_at_end=False)

    def on_train_start(self) -> None:
        self.t0, self.batches = time.time(), iter(self.loader)
        self.window_codes: list[np.ndarray] = []
        self.agg: dict[str, float] = {}

    def train_step(self) -> None:
        x, m = next(self.batches)
        loss, parts, codes = self.model.loss(x.to(self.device), m.to(self.device))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sched.step()
        self.window_codes.append(codes.detach().cpu().numpy().reshape(-1))
        for k, v in parts.items():
            self.agg[k] = self.agg.get(k, 0.0) + float(v)

    def log_train(self) -> None:
        step, every = self.step, self.tcfg.log_every
        n = every if step % every == 0 else step % every
        rec = {"step": step, **{k: v / n for k, v in self.agg.items()}, **codebook_stats(np.concatenate(self.window_codes), self.cfg.codebook_size),
               "elapsed_s": round(time.time() - self.t0, 2)}
        self.records.append(rec)
        if self.logf:
            self.logf.write(json.dumps(rec) + "\n")
            self.logf.flush()
        self.log(f"step {step}: " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in rec.items() if k != "step"))
        self.window_codes, self.agg = [], {}

    def save_checkpoint(self) -> None:
        save_vqvae(self.model, os.path.join(self.out_dir, "checkpoints", f"step_{self.step}"))

    def cleanup(self) -> None:
        if self.logf:
            self.logf.close()
