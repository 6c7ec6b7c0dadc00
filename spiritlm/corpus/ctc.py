"""The project's character CTC acoustic model: log-mel frames -> conformer -> characters.

It is the ASR judge of ``spiritlm eval judges`` (:mod:`spiritlm.judges` trains, saves and loads it)
and an aligner of ``spiritlm corpus align`` (:mod:`spiritlm.corpus.align`), so it lives in the
earlier stage. A judge folder holds ``judge.json`` (``{"format": "spiritlm-judge", "kind": "asr",
"config": AsrConfig}``) and ``model.safetensors``: :func:`load_ctc_judge` reads one.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from spiritlm.constants import SAMPLE_RATE
from spiritlm.tensors import length_mask

#: ``judge.json``'s ``format``.
JUDGE_FORMAT = "spiritlm-judge"


@dataclass
class AsrConfig:
    """The CTC ASR judge.

    Attributes:
        alphabet: output characters (CTC blank is index 0, character ``i`` is ``i + 1``).
        n_mels: log-mel bands (25 ms windows, 10 ms hop at 16 kHz).
        d_model: width of the conformer.
        num_layers: conformer blocks.
        num_heads: attention heads.
        ffn_dim: feed-forward width.
        conv_kernel: depthwise convolution kernel of the conformer (frames at 50 Hz).
        dropout: dropout inside the conformer.
    """

    alphabet: str = " 'abcdefghijklmnopqrstuvwxyz"
    n_mels: int = 80
    d_model: int = 96
    num_layers: int = 3
    num_heads: int = 4
    ffn_dim: int = 192
    conv_kernel: int = 15
    dropout: float = 0.1


class LogMel(nn.Module):
    """16 kHz waveforms ``(B, samples)`` -> normalised log-mel frames ``(B, frames, n_mels)`` at 100 Hz.

    Each utterance is normalised to zero mean and unit variance per band over its own valid
    frames, so loudness (a vocoder's gain, a whisper) does not move the features.

    >>> feats, n = LogMel(80)(torch.randn(2, 16000), torch.tensor([16000, 8000]))
    >>> feats.shape, n.tolist()
    (torch.Size([2, 101, 80]), [101, 51])
    """

    hop = 160

    def __init__(self, n_mels: int = 80):
        super().__init__()
        import torchaudio

        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=SAMPLE_RATE, n_fft=400, win_length=400, hop_length=self.hop, n_mels=n_mels
        )

    def forward(self, wavs: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.log(self.mel(wavs) + 1e-6).transpose(1, 2)  # (B, frames, n_mels)
        frames = lengths // self.hop + 1
        mask = length_mask(frames, x.shape[1]).unsqueeze(-1).float()
        count = mask.sum(1, keepdim=True).clamp(min=1)
        mean = (x * mask).sum(1, keepdim=True) / count
        var = (((x - mean) * mask) ** 2).sum(1, keepdim=True) / count
        x = (x - mean) / torch.sqrt(var + 1e-5) * mask
        return x, frames


class CtcAsr(nn.Module):
    """Log-mel frames -> CTC log-probabilities over ``blank + alphabet``.

    ``forward(feats (B, T, n_mels), lengths (B,)) -> (log_probs (B, ceil(T/2), V), lengths (B,))``
    with ``V = len(alphabet) + 1`` (frames at 50 Hz).

    >>> m = CtcAsr(AsrConfig(d_model=32, num_layers=1, num_heads=2, ffn_dim=64))
    >>> lp, n = m(torch.randn(2, 101, 80), torch.tensor([101, 51]))
    >>> lp.shape, n.tolist()
    (torch.Size([2, 51, 29]), [51, 26])
    """

    def __init__(self, cfg: AsrConfig):
        super().__init__()
        from torchaudio.models import Conformer

        self.cfg = cfg
        self.front = nn.Sequential(
            nn.Conv1d(cfg.n_mels, cfg.d_model, 3, padding=1), nn.GELU(),
            nn.Conv1d(cfg.d_model, cfg.d_model, 3, stride=2, padding=1), nn.GELU(),
        )
        self.encoder = Conformer(
            input_dim=cfg.d_model, num_heads=cfg.num_heads, ffn_dim=cfg.ffn_dim, num_layers=cfg.num_layers,
            depthwise_conv_kernel_size=cfg.conv_kernel, dropout=cfg.dropout,
        )
        self.out = nn.Linear(cfg.d_model, len(cfg.alphabet) + 1)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.front(feats.transpose(1, 2)).transpose(1, 2)
        lengths = torch.clamp((lengths + 1) // 2, min=1, max=x.shape[1])
        x, lengths = self.encoder(x, lengths)
        return self.out(x).log_softmax(-1), lengths


def load_ctc_judge(directory: str | os.PathLike) -> tuple[CtcAsr, dict]:
    """The :class:`CtcAsr` of an ASR judge folder (eval mode, CPU) and its ``judge.json``.

    Raises:
        ValueError: not an ASR judge folder (names the file).
    """
    from safetensors.torch import load_file

    d = Path(directory)
    path = d / "judge.json"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable judge.json ({e})") from None
    if meta.get("format") != JUDGE_FORMAT or meta.get("kind") != "asr":
        raise ValueError(f"{path}: not an ASR judge (format {meta.get('format')!r}, kind {meta.get('kind')!r})")
    model = CtcAsr(AsrConfig(**meta["config"]))
    model.load_state_dict(load_file(str(d / "model.safetensors")))
    return model.eval(), meta
