"""The unit vocoder's configuration: :class:`VocoderConfig`, its presets and Meta's ``config.json`` keys.

Presets (``VocoderConfig.preset(name, **overrides)``):

* ``tiny``: 128 initial channels, three upsamplings (10·8·8), two resblock kernels, 48-dim
  embeddings and a harmonic source (``harmonic_source``); learns on a 2-core CPU in minutes (the
  demo's vocoder);
* ``base``: the paper's generator (512 channels, resblocks [3, 7, 11], 128-dim embeddings) on
  HuBERT units, with a duration predictor (Spirit LM Base);
* ``expressive``: ``base`` plus 64 pitch codes and 100 style codes (Spirit LM Expressive).

Meta's released vocoders describe themselves in a ``config.json`` with different key names
(``num_embeddings``, ``num_f0_tokens``, ``code_hop_size``, ``dur_predictor_params`` …);
:meth:`VocoderConfig.from_meta` and :meth:`VocoderConfig.to_meta` convert.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from spiritlm.constants import SAMPLE_RATE, STREAM_RATES, UNIT_HOP

#: our own config file's format tag
FORMAT = "spiritlm-vocoder"
#: samples per F0 frame of the harmonic source (200 Hz at 16 kHz: the tokenizer's F0 frames)
F0_HOP = 80


def _default_dilations() -> list[list[int]]:
    return [[1, 3, 5], [1, 3, 5], [1, 3, 5]]


@dataclass
class VocoderConfig:
    """Architecture of a :class:`spiritlm.vocoder.model.UnitHifiGAN`.

    The generator's input is the concatenation (on channels, in this order) of the unit, pitch,
    style and speaker embeddings and the optional style-id embedding, each ``embedding_dim``
    wide, at the unit rate; one transposed convolution per ``upsample_rates`` entry (five in
    Meta's layout, three in ``tiny``) upsamples it by ``prod(upsample_rates) == unit_hop`` samples per unit.
    """

    num_units: int = 501
    """size of the HuBERT unit table (ids ``0 .. num_units-1``)."""
    num_pitch: int = 0
    """size of the pitch-code table (ids at ``sample_rate / pitch_hop`` Hz); 0 = no pitch stream."""
    num_style: int = 0
    """size of the style-code table (ids at ``sample_rate / style_hop`` Hz); 0 = no style stream."""
    num_speakers: int = 1
    """size of the speaker table (one vector per utterance); 0 = no speaker embedding."""
    num_style_ids: int = 0
    """size of the utterance-level style-id table (Meta's ``multistyle``, e.g. Expresso's
    "conv-default"); 0 = none."""
    embedding_dim: int = 128
    """width (channels) of every embedding table."""
    upsample_rates: list[int] = field(default_factory=lambda: [5, 4, 4, 4, 2])
    """stride of each transposed convolution; their product is ``unit_hop`` (samples)."""
    upsample_kernel_sizes: list[int] = field(default_factory=lambda: [11, 8, 8, 8, 4])
    """kernel (samples at that layer's rate) of each transposed convolution."""
    upsample_initial_channel: int = 512
    """channels after ``conv_pre``; halved by every upsampling layer."""
    resblock_kernel_sizes: list[int] = field(default_factory=lambda: [3, 7, 11])
    """kernel of each parallel residual block (multi-receptive-field fusion)."""
    resblock_dilation_sizes: list[list[int]] = field(default_factory=_default_dilations)
    """dilations of the three convolutions in each residual block."""
    duration_predictor: bool = True
    """build the duration predictor (needed to synthesise deduplicated units)."""
    duration_hidden: int = 128
    """channels of the duration predictor's convolutions."""
    duration_kernel: int = 3
    """kernel (units) of the duration predictor's convolutions."""
    duration_dropout: float = 0.5
    """dropout after each of the duration predictor's layer norms (training only)."""
    sample_rate: int = SAMPLE_RATE
    """output sample rate (Hz)."""
    unit_hop: int = UNIT_HOP
    """samples per HuBERT unit (640 at 16 kHz = 25 Hz)."""
    pitch_hop: int = round(SAMPLE_RATE / STREAM_RATES["pitch"])
    """samples per pitch code (1280 at 16 kHz = 12.5 Hz)."""
    style_hop: int = round(SAMPLE_RATE / STREAM_RATES["style"])
    """samples per style code (16000 at 16 kHz = 1 Hz)."""
    default_pitch: int | None = None
    """pitch code filled in for an input without a pitch stream (an LM output with no ``[PiN]``
    token): the most frequent per-unit code of the training units (``spiritlm vocoder train``
    stores it); None: such inputs are refused, as Meta's decoder fails on them."""
    default_style: int | None = None
    """style code filled in for an input without a style stream: the most frequent per-unit code
    of the training units; None: the first of Meta's common styles (71, 68, 98) that fits the
    table, else 0 (Meta's decoder picks one of the three at random)."""
    harmonic_source: bool = False
    """add a neural source-filter excitation (NSF-HiFiGAN): a small head predicts log F0 and
    voicing at 200 Hz from the generator's input, a sum of sines at that F0 (zero where unvoiced)
    is made at the sample rate and added, strided down, after every upsampling layer. Lets a
    small generator render pitch after few steps. Not part of Meta's layout (export refuses it);
    False for ``base`` / ``expressive`` and Meta's vocoders."""
    source_harmonics: int = 8
    """sines at F0, 2·F0 … (those above Nyquist are dropped), merged by a learned linear layer."""
    source_hidden: int = 64
    """channels of the F0 head's two convolutions (kernel 3, in units)."""

    def __post_init__(self) -> None:
        self.upsample_rates = [int(v) for v in self.upsample_rates]
        self.upsample_kernel_sizes = [int(v) for v in self.upsample_kernel_sizes]
        self.resblock_kernel_sizes = [int(v) for v in self.resblock_kernel_sizes]
        self.resblock_dilation_sizes = [[int(d) for d in ds] for ds in self.resblock_dilation_sizes]
        self.validate()

    # -- derived -------------------------------------------------------------------------------

    @property
    def pitch_ratio(self) -> int:
        """Units per pitch code (2 for 25 Hz units and 12.5 Hz pitch)."""
        return max(1, round(self.pitch_hop / self.unit_hop))

    @property
    def style_ratio(self) -> int:
        """Units per style code (25 for 25 Hz units and 1 Hz style)."""
        return max(1, round(self.style_hop / self.unit_hop))

    @property
    def num_streams(self) -> int:
        """How many embeddings are concatenated at the generator's input."""
        return 1 + sum(n > 0 for n in (self.num_pitch, self.num_style, self.num_speakers, self.num_style_ids))

    @property
    def f0_frames_per_unit(self) -> int:
        """F0 frames (200 Hz) per unit of the harmonic source: ``unit_hop / 80`` (8)."""
        return self.unit_hop // F0_HOP

    @property
    def in_channels(self) -> int:
        """Channels at the generator's input (Meta's ``model_in_dim``)."""
        return self.embedding_dim * self.num_streams

    def validate(self) -> None:
        """Raises ``ValueError`` for an inconsistent architecture."""
        prod = 1
        for r in self.upsample_rates:
            prod *= r
        if prod != self.unit_hop:
            raise ValueError(f"upsample_rates {self.upsample_rates} multiply to {prod}, not unit_hop {self.unit_hop}")
        if len(self.upsample_rates) != len(self.upsample_kernel_sizes):
            raise ValueError("upsample_rates and upsample_kernel_sizes must have the same length")
        for r, k in zip(self.upsample_rates, self.upsample_kernel_sizes):
            # (k - r) even keeps the transposed convolution's output exactly r times its input
            if k < r or (k - r) % 2:
                raise ValueError(f"upsample kernel {k} does not fit rate {r} (need k >= r and k - r even)")
        if len(self.resblock_kernel_sizes) != len(self.resblock_dilation_sizes):
            raise ValueError("resblock_kernel_sizes and resblock_dilation_sizes must have the same length")
        if any(k % 2 == 0 for k in self.resblock_kernel_sizes) or self.duration_kernel % 2 == 0:
            raise ValueError("convolution kernels must be odd")
        if self.upsample_initial_channel % (2 ** len(self.upsample_rates)):
            raise ValueError(f"upsample_initial_channel {self.upsample_initial_channel} is not divisible by 2^{len(self.upsample_rates)}")
        if self.num_units <= 0 or self.embedding_dim <= 0:
            raise ValueError("num_units and embedding_dim must be positive")
        if min(self.num_pitch, self.num_style, self.num_speakers, self.num_style_ids) < 0:
            raise ValueError("table sizes must be >= 0")
        if self.harmonic_source and (self.unit_hop % F0_HOP or self.source_harmonics < 1 or self.source_hidden < 1):
            raise ValueError(f"harmonic_source needs unit_hop divisible by {F0_HOP} and source_harmonics, source_hidden >= 1")
        for name, code, size in (("default_pitch", self.default_pitch, self.num_pitch), ("default_style", self.default_style, self.num_style)):
            if code is not None and not 0 <= int(code) < size:
                raise ValueError(f"{name} {code} is not a code of the {size}-entry table")

    # -- presets ---------------------------------------------------------------------------------

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "VocoderConfig":
        """A named configuration (``tiny``, ``base``, ``expressive``) with fields overridden.

        >>> VocoderConfig.preset("expressive", num_speakers=4).in_channels
        512
        """
        if name not in PRESETS:
            raise ValueError(f"unknown vocoder config {name!r} (choose from {', '.join(PRESETS)})")
        values = dict(PRESETS[name])
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown vocoder config field(s): {', '.join(sorted(unknown))}")
        values.update(overrides)
        return cls(**values)

    # -- our JSON ------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict with a format tag (our ``config.json``)."""
        return {"format": FORMAT, "version": 1, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "VocoderConfig":
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        d = {k: v for k, v in d.items() if k not in ("format", "version")}
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown vocoder config key(s): {', '.join(sorted(unknown))}")
        return cls(**d)

    # -- Meta's config.json ----------------------------------------------------------------------

    def to_meta(self) -> dict[str, Any]:
        """The keys of Meta's ``hifigan_spiritlm_*/config.json`` for this architecture.

        Raises ``ValueError`` for a vocoder with a harmonic source: Meta's generator has none.
        """
        if self.harmonic_source:
            raise ValueError("Meta's vocoder layout has no harmonic source (harmonic_source=True): "
                             "use our folder format (Vocoder.save)")
        out: dict[str, Any] = {
            "resblock": "1",
            "upsample_rates": list(self.upsample_rates),
            "upsample_kernel_sizes": list(self.upsample_kernel_sizes),
            "upsample_initial_channel": self.upsample_initial_channel,
            "resblock_kernel_sizes": list(self.resblock_kernel_sizes),
            "resblock_dilation_sizes": [list(d) for d in self.resblock_dilation_sizes],
            "num_embeddings": self.num_units,
            "embedding_dim": self.embedding_dim,
            "model_in_dim": self.in_channels,
            "code_hop_size": self.unit_hop,
            "sampling_rate": self.sample_rate,
        }
        if self.num_pitch:
            out["num_f0_tokens"] = self.num_pitch
            out["f0_hop_size"] = self.pitch_hop
        if self.num_style:
            out["num_style_tokens"] = self.num_style
            out["style_hop_size"] = self.style_hop
        out["multispkr"] = bool(self.num_speakers)
        if self.num_speakers:
            out["num_speakers"] = self.num_speakers
        out["multistyle"] = bool(self.num_style_ids)
        if self.num_style_ids:
            out["num_styles"] = self.num_style_ids
        if self.duration_predictor:
            out["dur_predictor_params"] = {
                "encoder_embed_dim": self.embedding_dim,
                "var_pred_hidden_dim": self.duration_hidden,
                "var_pred_kernel_size": self.duration_kernel,
                "var_pred_dropout": self.duration_dropout,
            }
        return out

    @classmethod
    def from_meta(cls, cfg: dict[str, Any]) -> "VocoderConfig":
        """Reads Meta's ``config.json`` keys (training-only keys are ignored).

        Meta's loader defaults: 200 speakers when ``multispkr`` is set without ``num_speakers``,
        100 style ids when ``multistyle`` is set without ``num_styles``.
        """
        try:
            emb = int(cfg["embedding_dim"])
            dur = cfg.get("dur_predictor_params") or None
            c = cls(
                num_units=int(cfg["num_embeddings"]),
                num_pitch=int(cfg.get("num_f0_tokens") or 0),
                num_style=int(cfg.get("num_style_tokens") or 0),
                num_speakers=int(cfg.get("num_speakers", 200)) if cfg.get("multispkr") else 0,
                num_style_ids=int(cfg.get("num_styles", 100)) if cfg.get("multistyle") else 0,
                embedding_dim=emb,
                upsample_rates=cfg["upsample_rates"],
                upsample_kernel_sizes=cfg["upsample_kernel_sizes"],
                upsample_initial_channel=int(cfg["upsample_initial_channel"]),
                resblock_kernel_sizes=cfg["resblock_kernel_sizes"],
                resblock_dilation_sizes=cfg["resblock_dilation_sizes"],
                duration_predictor=dur is not None,
                duration_hidden=int(dur["var_pred_hidden_dim"]) if dur else 128,
                duration_kernel=int(dur["var_pred_kernel_size"]) if dur else 3,
                duration_dropout=float(dur["var_pred_dropout"]) if dur else 0.5,
                sample_rate=int(cfg.get("sampling_rate", SAMPLE_RATE)),
                unit_hop=int(cfg.get("code_hop_size", UNIT_HOP)),
                pitch_hop=int(cfg.get("f0_hop_size", cls.pitch_hop)),
                style_hop=int(cfg.get("style_hop_size", cls.style_hop)),
            )
        except KeyError as exc:
            raise ValueError(f"Meta vocoder config lacks key {exc.args[0]!r}") from None
        if str(cfg.get("resblock", "1")) != "1":
            raise ValueError(f"only resblock type 1 is supported, got {cfg.get('resblock')!r}")
        if cfg.get("f0") or cfg.get("embedder_params") or cfg.get("f0_quant_num_bin"):
            raise ValueError("continuous-F0 or speaker-embedder vocoders (f0 / embedder_params) are not supported")
        if dur is not None and int(dur.get("encoder_embed_dim", emb)) != emb:
            raise ValueError("dur_predictor_params.encoder_embed_dim must equal embedding_dim")
        if "model_in_dim" in cfg and int(cfg["model_in_dim"]) != c.in_channels:
            raise ValueError(f"model_in_dim {cfg['model_in_dim']} does not match the {c.num_streams} embedding streams ({c.in_channels})")
        return c


PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        num_units=501,
        embedding_dim=48,
        upsample_initial_channel=128,
        # three upsamplings (hop 640 = 10·8·8) so the 16 kHz stage has 16 channels, not 4: with the
        # 5-stage layout the source rendered pitch for one seed and not another (vocoder/README.md)
        upsample_rates=[10, 8, 8],
        upsample_kernel_sizes=[20, 16, 16],
        resblock_kernel_sizes=[3, 7],
        resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5]],
        duration_hidden=64,
        duration_dropout=0.1,
        # renders pitch within the demo's 800 CPU steps, which the plain generator does not
        harmonic_source=True,
    ),
    "base": dict(
        num_units=501,
        embedding_dim=128,
        upsample_initial_channel=512,
        duration_hidden=128,
    ),
    "expressive": dict(
        num_units=501,
        num_pitch=64,
        num_style=100,
        embedding_dim=128,
        upsample_initial_channel=512,
        duration_hidden=128,
    ),
}
