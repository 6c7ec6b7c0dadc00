"""Pitch tokenizer: 16 kHz audio -> F0 at 200 Hz -> pitch VQ-VAE codes at 12.5 Hz.

A directory holds ``pitch_config.json`` (:class:`PitchConfig`), ``vqvae_config.json``,
``model.safetensors``, ``f0_stats.json`` (per-speaker log-F0 statistics this tokenizer uses) and,
when trained by ``spiritlm tokenizer train``, ``speaker_stats.pt`` (the same speakers in Meta's
``speaker_stats`` format, ``{speaker: {"f0_mean", "f0_std", "logf0_mean", "logf0_std"}}``).
A directory whose ``pitch_config.json`` has ``"format": "meta"`` refers to Meta's released
quantizer instead (:mod:`spiritlm.tokenizers.meta_pitch`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from spiritlm.constants import STREAM_RATES

from .f0 import F0Config, SpeakerStats, extract_f0_batch, normalise
from .vqvae import PitchVQVAE, load_vqvae, num_codes, save_vqvae


@dataclass
class PitchConfig:
    """Pitch tokenizer settings.

    Attributes:
        f0: F0 extraction (backend, range).
        frame_rate: token rate in Hz (200 Hz / VQ-VAE downsampling).
    """

    f0: F0Config = field(default_factory=F0Config)
    frame_rate: float = STREAM_RATES["pitch"]

    @classmethod
    def from_dict(cls, d: dict) -> PitchConfig:
        d = dict(d)
        return cls(f0=F0Config(**d.pop("f0", {})), **d)


class PitchTokenizer:
    """F0 extraction + speaker normalisation + VQ-VAE encoding.

    Args:
        model: trained :class:`PitchVQVAE`.
        stats: per-speaker log-F0 statistics (unknown speakers use the utterance's own mean).
        cfg: settings.
    """

    def __init__(self, model: PitchVQVAE, stats: SpeakerStats, cfg: PitchConfig | None = None):
        self.model = model.eval()
        self.stats = stats
        self.cfg = cfg or PitchConfig()

    @property
    def codebook_size(self) -> int:
        return self.model.cfg.codebook_size

    def to(self, device) -> PitchTokenizer:
        self.model.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def f0(self, wavs: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """``[(f0 Hz (T,), vuv (T,))]`` at 200 Hz for 16 kHz waveforms."""
        return extract_f0_batch(wavs, self.cfg.f0)

    def features(self, f0: np.ndarray, vuv: np.ndarray, speaker: str | None = None) -> np.ndarray:
        """VQ-VAE input ``(2, T)``: normalised interpolated log-F0 and voicing."""
        mean = self.stats.mean_for(speaker, f0)
        return normalise(f0, vuv, mean, self.stats.global_std)

    @torch.inference_mode()
    def encode_features(self, feats: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Codes ``(T_i // 16,)`` int64 of each ``(2, T_i)`` input (one at a time: the encoder's
        convolutions would otherwise see the padding)."""
        out = []
        for x in feats:
            codes = self.model.encode(torch.from_numpy(x)[None].to(self.device))
            out.append(codes[0].cpu().numpy().astype(np.int64))
        return out

    def encode(self, wavs: Sequence[np.ndarray], speakers: Sequence[str | None] | None = None) -> list[np.ndarray]:
        """Pitch tokens of each 16 kHz waveform: int64 ``(num_codes(samples // 80 + 1),)``."""
        speakers = list(speakers) if speakers is not None else [None] * len(wavs)
        feats = [self.features(f, v, s) for (f, v), s in zip(self.f0(wavs), speakers)]
        return self.encode_features(feats)

    @torch.inference_mode()
    def reconstruct(self, codes: np.ndarray) -> np.ndarray:
        """Decoder output ``(2, 16 T')`` (normalised log-F0, voicing probability) of codes ``(T',)``."""
        x = self.model.decode(torch.as_tensor(codes, dtype=torch.long)[None].to(self.device))[0]
        x[1] = torch.sigmoid(x[1])
        return x.cpu().numpy()

    def num_tokens(self, num_samples: int) -> int:
        return num_codes(int(num_samples) // 80 + 1, self.model.cfg.downsample)

    def save(self, directory: str | os.PathLike) -> None:
        os.makedirs(directory, exist_ok=True)
        save_vqvae(self.model, directory)
        self.stats.save(os.path.join(directory, "f0_stats.json"))
        with open(os.path.join(directory, "pitch_config.json"), "w") as f:
            json.dump(asdict(self.cfg), f, indent=1)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> PitchTokenizer:
        path = os.path.join(directory, "pitch_config.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: not a pitch tokenizer directory")
        with open(path) as f:
            d = json.load(f)
        if d.get("format") == "meta":  # a reference to Meta's released quantizer: meta_pitch reads it
            raise ValueError(f"{path}: refers to Meta's pitch quantizer (load it with meta_pitch.load_pitch_tokenizer)")
        return cls(load_vqvae(directory), SpeakerStats.load(os.path.join(directory, "f0_stats.json")), PitchConfig.from_dict(d))
