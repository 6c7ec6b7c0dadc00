"""Meta's released pitch quantizer (``speech_tokenizer/vqvae_f0_quantizer``) as a pitch tokenizer.

The release is a folder with ``config.yaml`` (``encoder_params``, ``vq_params``,
``decoder_params``, ``features`` such as ``norm_f0_interp,vuv``, optional ``speaker_norm`` /
``speaker_stats``) and ``model.pt`` (``{"model": state_dict}``) in the module layout of the
speech-resynthesis F0 VQ-VAE (after jukebox): ``encoder.level_blocks.0.model.<i>`` holds, for
each downsampling step, ``(Conv1d(k=2s, stride s), Resnet1D)`` with residual blocks
``model.<j>.model.{1: dilated Conv1d k=3, 3: Conv1d k=1}``, then a final ``Conv1d(k=3)``; the
codebook is ``vq.level_blocks.0.k`` ``(bins, width)``. Only the encoder and the codebook are
needed to make tokens; decoder weights are ignored.

Input features (Meta's ``F0Tokenizer``): the F0 extractor's contour at 200 Hz — interpolated
over unvoiced frames by the backend itself (see :func:`spiritlm.tokenizers.f0.extract_f0_batch`,
``interpolated=True``) when ``features`` names ``interp`` — and, when ``features`` starts with
``norm_`` or ``speaker_norm`` is set, minus a mean F0 **in Hz** (linear, not log) on its non-zero
frames: the speaker's ``f0_mean`` from the ``speaker_stats`` file, else the mean of the
contour over the utterance's voiced frames. Stacked with voicing: ``(2, T)``, with
``T = N // 80 + 1`` frames for N samples (FCPE and the other backends) or ``N // 80`` (pYAAPT, as
Meta's extractor returns it); tokens: ``T // 16``.

The ``speaker_stats`` file (``{speaker: {"f0_mean": Hz, ...}}``, a torch file) is looked up at the
path ``config.yaml`` names, then under that name inside the folder; an explicit path can be
given instead. F0 comes from FCPE by default, as in Meta's ``spiritlm_expressive()``; pYAAPT
(Meta's alternative) and this project's other backends can be chosen.

Files are read with ``torch.load(weights_only=True)`` and ``yaml.safe_load``.
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch
from torch import nn

from .f0 import F0Config, extract_f0_batch, load_meta_speaker_stats, resolve_backend
from .pitch import PitchConfig, PitchTokenizer


class _ResBlock(nn.Module):
    def __init__(self, width: int, state: int, dilation: int):
        super().__init__()
        self.model = nn.Sequential(nn.ReLU(), nn.Conv1d(width, state, 3, 1, dilation, dilation), nn.ReLU(), nn.Conv1d(state, width, 1))

    def forward(self, x):
        return x + self.model(x)


class _ResStack(nn.Module):
    def __init__(self, width: int, depth: int, m_conv: float, growth: int, cycle: int | None, reverse: bool = False):
        super().__init__()
        blocks = [_ResBlock(width, int(m_conv * width), growth ** (d % cycle if cycle else d)) for d in range(depth)]
        self.model = nn.Sequential(*(blocks[::-1] if reverse else blocks))

    def forward(self, x):
        return self.model(x)


class _EncoderLevel(nn.Module):
    def __init__(self, c_in: int, c_out: int, down_t: int, stride_t: int, width: int, depth: int, m_conv: float = 1.0,
                 dilation_growth_rate: int = 1, dilation_cycle: int | None = None, **_):
        super().__init__()
        k, p = (stride_t * 2, stride_t // 2) if stride_t % 2 == 0 else (stride_t * 2 + 1, stride_t // 2 + 1)
        blocks: list[nn.Module] = []
        for i in range(down_t):
            blocks.append(nn.Sequential(nn.Conv1d(c_in if i == 0 else width, width, k, stride_t, p),
                                        _ResStack(width, depth, m_conv, dilation_growth_rate, dilation_cycle)))
        blocks.append(nn.Conv1d(width, c_out, 3, 1, 1))
        self.model = nn.Sequential(*blocks)

    def forward(self, x):
        return self.model(x)


class _Levels(nn.Module):
    def __init__(self, blocks):
        super().__init__()
        self.level_blocks = nn.ModuleList(blocks)


class _Codebook(nn.Module):
    def __init__(self, bins: int, width: int):
        super().__init__()
        self.register_buffer("k", torch.zeros(bins, width))


class MetaF0Encoder(nn.Module):
    """Encoder + codebook of Meta's pitch VQ-VAE. ``encode((B, 2, T)) -> (B, T')`` codes."""

    def __init__(self, encoder_params: dict, vq_params: dict):
        super().__init__()
        ep = dict(encoder_params)
        if int(ep.get("levels", 1)) != 1 or int(vq_params.get("levels", 1)) != 1:
            raise ValueError("only single-level F0 VQ-VAEs are supported")
        downs, strides = ep.pop("downs_t"), ep.pop("strides_t")
        down_t, stride_t = int(downs[0]), int(strides[0])
        c_in, c_out = int(ep.pop("input_emb_width")), int(ep.pop("output_emb_width"))
        ep.pop("levels", None)
        ep.pop("reverse_decoder_dilation", None)
        self.encoder = _Levels([_EncoderLevel(c_in, c_out, down_t, stride_t, **ep)])
        self.vq = _Levels([_Codebook(int(vq_params["l_bins"]), int(vq_params["emb_width"]))])
        self.downsample = stride_t**down_t

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        z = self.encoder.level_blocks[0](x)  # (B, D, T')
        B, D, T = z.shape
        z = z.transpose(1, 2).reshape(-1, D)
        k = self.vq.level_blocks[0].k
        d = (z**2).sum(1, keepdim=True) - 2 * z @ k.T + (k**2).sum(1)[None]
        return d.argmin(1).reshape(B, T)


def load_meta_f0_encoder(directory: str | os.PathLike) -> tuple[MetaF0Encoder, dict]:
    """Reads ``config.yaml`` + ``model.pt`` of Meta's ``vqvae_f0_quantizer`` folder."""
    import yaml

    cfg_path, ckpt_path = os.path.join(directory, "config.yaml"), os.path.join(directory, "model.pt")
    for p in (cfg_path, ckpt_path):
        if not os.path.isfile(p):
            raise FileNotFoundError(f"{p}: not found (expected Meta's vqvae_f0_quantizer folder)")
    with open(cfg_path) as f:
        cfg = yaml.safe_load(f)
    try:
        model = MetaF0Encoder(cfg["encoder_params"], cfg["vq_params"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{cfg_path}: unsupported VQ-VAE config ({exc})") from None
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{ckpt_path}: cannot be read with weights_only=True ({str(exc).splitlines()[0]})") from None
    sd = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(sd, dict):
        raise ValueError(f"{ckpt_path}: expected {{'model': state_dict}}")
    wanted = {k: v for k, v in sd.items() if k.startswith(("encoder.", "vq."))}
    missing, unexpected = model.load_state_dict(wanted, strict=False)
    if missing or unexpected:
        raise ValueError(f"{ckpt_path}: weights do not match the config (missing {missing[:5]}, unexpected {unexpected[:5]})")
    return model.eval(), cfg


def find_speaker_stats(directory: str | os.PathLike, meta_cfg: dict) -> str | None:
    """The ``speaker_stats`` file a quantizer config names: the path as written (relative to the
    folder when relative), else a file of that name inside the folder; None when there is none
    (Meta's released config names a path on their cluster, so utterance means are used)."""
    name = meta_cfg.get("speaker_stats")
    if not name:
        return None
    name = str(name)
    for cand in (name if os.path.isabs(name) else os.path.join(directory, name), os.path.join(directory, os.path.basename(name))):
        if os.path.isfile(cand):
            return os.path.abspath(cand)
    return None


class MetaPitchTokenizer(PitchTokenizer):
    """Pitch tokens from Meta's released quantizer (see the module docstring).

    Args:
        directory: the ``vqvae_f0_quantizer`` folder.
        speaker_means: speaker -> mean F0 in Hz (Meta's ``speaker_stats`` ``f0_mean``); unknown
            speakers use the utterance's voiced mean. None: read the ``speaker_stats`` file of
            ``speaker_stats`` or of the folder's config when there is one.
        cfg: F0 extraction settings (default: FCPE, as Meta's release).
        speaker_stats: a Meta-format speaker stats file (overrides the config's).
    """

    def __init__(self, directory: str | os.PathLike, speaker_means: dict[str, float] | None = None, cfg: PitchConfig | None = None,
                 speaker_stats: str | os.PathLike | None = None):
        model, meta_cfg = load_meta_f0_encoder(directory)
        self.directory = os.path.abspath(directory)
        self.meta_cfg = meta_cfg
        self.speaker_stats_path = None
        if speaker_means is None:
            self.speaker_stats_path = str(speaker_stats) if speaker_stats else find_speaker_stats(directory, meta_cfg)
            speaker_means = load_meta_speaker_stats(self.speaker_stats_path) if self.speaker_stats_path else {}
        self.speaker_means = {str(k): float(v) for k, v in speaker_means.items()}
        feats = str(meta_cfg.get("features", "norm_f0_interp,vuv"))
        if feats not in ("f0_interp,vuv", "f0,vuv", "norm_f0_interp,vuv", "norm_f0,vuv"):
            raise ValueError(f"{directory}: unsupported features {feats!r}")
        self.normalise_f0 = bool(meta_cfg.get("speaker_norm", False)) or feats.startswith("norm_")
        self.interpolate = "interp" in feats
        self.model = model
        self.stats = None  # type: ignore[assignment]
        self.cfg = cfg or PitchConfig(f0=F0Config(backend="fcpe"))

    @property
    def codebook_size(self) -> int:
        return int(self.model.vq.level_blocks[0].k.shape[0])

    def _frames(self, num_samples: int) -> int:
        """F0 frames Meta's extractor gives: ``N // 80 + 1`` (FCPE), ``N // 80`` (pYAAPT)."""
        return int(num_samples) // 80 + (0 if resolve_backend(self.cfg.f0.backend) == "pyaapt" else 1)

    def f0(self, wavs):
        """``[(contour Hz (T,), vuv (T,))]`` at 200 Hz: interpolated by the backend when the
        quantizer's ``features`` say ``interp`` (as Meta's extractors with ``interpolate=True``),
        with as many frames as Meta's extractor gives (pYAAPT: one fewer)."""
        out = extract_f0_batch(wavs, self.cfg.f0, interpolated=self.interpolate)
        return [(f[: self._frames(len(w))], v[: self._frames(len(w))]) for (f, v), w in zip(out, wavs)]

    def features(self, f0, vuv, speaker=None) -> np.ndarray:
        """``(2, T)``: the contour of :meth:`f0` minus the mean F0 in Hz on its non-zero frames
        (speaker's ``f0_mean``, else the contour's mean over voiced frames), and voicing."""
        x = np.asarray(f0, np.float64).copy()
        vuv = np.asarray(vuv, np.float32)
        if self.normalise_f0:
            if speaker is not None and str(speaker) in self.speaker_means:
                mean = self.speaker_means[str(speaker)]
            else:  # Meta: the mean over voiced frames of the (interpolated) contour
                mean = float(np.mean(x[vuv != 0])) if np.any(vuv != 0) else 0.0
            x = np.where(x != 0, x - mean, 0.0)
        return np.stack([x, vuv]).astype(np.float32)

    def reconstruct(self, codes):
        raise NotImplementedError("Meta's quantizer is loaded for encoding only (no decoder)")

    def num_tokens(self, num_samples: int) -> int:
        return self._frames(num_samples) // self.model.downsample

    def save(self, directory) -> None:
        os.makedirs(directory, exist_ok=True)
        from dataclasses import asdict

        with open(os.path.join(directory, "pitch_config.json"), "w") as f:
            json.dump({"format": "meta", "checkpoint": self.directory, "speaker_stats": self.speaker_stats_path,
                       "speaker_means": self.speaker_means, **asdict(self.cfg)}, f, indent=1)


def load_pitch_tokenizer(directory: str | os.PathLike) -> PitchTokenizer:
    """A saved pitch tokenizer of either kind: this project's VQ-VAE (:meth:`PitchTokenizer.load`)
    or a reference to Meta's released quantizer (``"format": "meta"`` in ``pitch_config.json``).

    Lives here, not in :mod:`.pitch`, so that imports go one way (meta_pitch -> pitch).
    """
    path = os.path.join(directory, "pitch_config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: not a pitch tokenizer directory")
    with open(path) as f:
        d = json.load(f)
    if d.pop("format", None) != "meta":
        return PitchTokenizer.load(directory)
    ckpt, means = d.pop("checkpoint"), d.pop("speaker_means", {})
    tok = MetaPitchTokenizer(ckpt, means, PitchConfig.from_dict({k: v for k, v in d.items() if k != "speaker_stats"}))
    tok.speaker_stats_path = d.get("speaker_stats")  # where the means were read from (kept in the config)
    return tok
