"""``SpeechTokenizer``: audio -> Meta's unit dict / token string (HuBERT units, pitch, style).

A tokenizer directory::

    DIR/config.json          {"format": "spiritlm-speech-tokenizer", "version": 1, "kind": ...}
    DIR/units/unit_config.json + kmeans.pt          (Meta's k-means format)
                       or + linear_quantizer.pt (Meta's linear quantizer layout)
    DIR/pitch/...            (expressive only; see spiritlm.tokenizers.pitch)
    DIR/style/...            (expressive only; see spiritlm.tokenizers.style)

``base`` tokenizers have units only; ``expressive`` ones units, pitch and style. Large external
checkpoints (a HuBERT, a wav2vec 2.0 style encoder, Meta's pitch quantizer) are referenced by
absolute path in the configs, not copied; everything trained here is stored in the directory.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from spiritlm.audio import AudioSource, load_audio
from spiritlm.constants import STREAM_RATES
from ..formats import units_to_string
from .utils import resolve_device
from .features import FeatureBackend, FeatureConfig, load_backend
from .kmeans import KMeansQuantizer, LinearQuantizer, load_quantizer, save_kmeans
from .meta_pitch import load_pitch_tokenizer
from .pitch import PitchTokenizer
from .style import StyleTokenizer

FORMAT = "spiritlm-speech-tokenizer"


@dataclass
class UnitConfig:
    """Unit tokenizer settings.

    Attributes:
        features: the feature backend.
        frame_rate: unit rate in Hz (25).
    """

    features: FeatureConfig = field(default_factory=FeatureConfig)
    frame_rate: float = STREAM_RATES["hubert"]

    @classmethod
    def from_dict(cls, d: dict) -> UnitConfig:
        d = dict(d)
        return cls(features=FeatureConfig.from_dict(d.pop("features", {})), **d)


class UnitTokenizer:
    """Feature backend + quantizer (k-means centres, or a :class:`KMeansQuantizer` /
    :class:`LinearQuantizer`): 16 kHz waveforms -> unit ids at 25 Hz."""

    def __init__(self, backend: FeatureBackend, centers: np.ndarray | KMeansQuantizer | LinearQuantizer, cfg: UnitConfig):
        self.backend = backend.eval()
        q = centers if isinstance(centers, torch.nn.Module) else KMeansQuantizer(centers)
        self.quantizer = q.to(backend.device)
        self.cfg = cfg
        if self.quantizer.dim != backend.dim:
            raise ValueError(f"the unit quantizer takes features of dim {self.quantizer.dim} but the {cfg.features.backend} features have dim {backend.dim}")

    @property
    def n_units(self) -> int:
        return self.quantizer.n_clusters

    def to(self, device) -> UnitTokenizer:
        self.backend.to(device)
        self.quantizer.to(device)
        return self

    @torch.inference_mode()
    def encode(self, wavs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Units int64 ``(frames_i,)`` of each waveform (frames as a 25 Hz HuBERT)."""
        from ..tensors import pad_batch

        batch, lengths = pad_batch(wavs)
        dev = self.backend.device
        feats, n = self.backend(batch.to(dev), lengths.to(dev))
        codes = self.quantizer(feats, n).cpu().numpy().astype(np.int64)
        return [codes[i, : int(k)] for i, k in enumerate(n.cpu())]

    def save(self, directory: str | os.PathLike) -> None:
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "unit_config.json"), "w") as f:
            json.dump(asdict(self.cfg), f, indent=1)
        files = {"kmeans.pt", "linear_quantizer.pt"}
        if isinstance(self.quantizer, LinearQuantizer):
            keep = "linear_quantizer.pt"
            self.quantizer.save(os.path.join(directory, keep))
        else:
            keep = "kmeans.pt"
            save_kmeans(os.path.join(directory, keep), self.quantizer.centers.cpu().numpy())
        for stale in files - {keep}:  # a directory rewritten with the other layout
            if os.path.exists(os.path.join(directory, stale)):
                os.remove(os.path.join(directory, stale))

    @classmethod
    def load(cls, directory: str | os.PathLike, device="cpu", precision: str = "fp32") -> UnitTokenizer:
        """Loads a unit tokenizer directory; ``precision`` ``"bf16"`` runs a HuBERT backend in bfloat16."""
        path = os.path.join(directory, "unit_config.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: not a unit tokenizer directory")
        with open(path) as f:
            cfg = UnitConfig.from_dict(json.load(f))
        qpath = os.path.join(directory, "linear_quantizer.pt")
        if not os.path.isfile(qpath):
            qpath = os.path.join(directory, "kmeans.pt")
        return cls(load_backend(cfg.features, device, precision), load_quantizer(qpath), cfg)


class SpeechTokenizer:
    """The speech tokenizer of Spirit LM: units (+ pitch + style for ``expressive``).

    Args:
        units: the unit tokenizer.
        pitch: the pitch tokenizer (expressive).
        style: the style tokenizer (expressive).
        vocoder: a :class:`spiritlm.vocoder.Vocoder` for :meth:`decode` (optional; can be set later
            as ``tokenizer.vocoder``).
    """

    def __init__(
        self,
        units: UnitTokenizer,
        pitch: PitchTokenizer | None = None,
        style: StyleTokenizer | None = None,
        vocoder=None,
    ):
        if (pitch is None) != (style is None):
            raise ValueError("an expressive tokenizer needs both pitch and style (a base one neither)")
        self.units, self.pitch, self.style = units, pitch, style
        self.vocoder = vocoder

    @property
    def kind(self) -> str:
        return "expressive" if self.pitch is not None else "base"

    @property
    def num_units(self) -> dict[str, int]:
        """Units each stream can produce: ``{"hubert": N, "pitch": P, "style": S}`` (0: no such stream).

        Generation keeps its speech vocabulary to these (``spiritlm.generation.SpiritLM``).
        """
        return {
            "hubert": int(self.units.n_units),
            "pitch": int(self.pitch.codebook_size) if self.pitch is not None else 0,
            "style": int(self.style.num_tokens_vocab) if self.style is not None else 0,
        }

    @property
    def device(self) -> torch.device:
        return self.units.backend.device

    def to(self, device) -> SpeechTokenizer:
        device = resolve_device(device)
        for part in (self.units, self.pitch, self.style):
            if part is not None:
                part.to(device)
        return self

    # -----------------------------------------------------------------------------------------

    def encode_streams(self, wavs: Sequence[np.ndarray], speakers: Sequence[str | None] | None = None) -> list[dict[str, np.ndarray]]:
        """Token arrays per stream for 16 kHz float32 waveforms.

        Returns one dict per waveform: ``hubert`` (25 Hz), and for expressive tokenizers
        ``pitch`` (12.5 Hz) and ``style`` (1 Hz), each an int64 array.
        """
        out = [{"hubert": u} for u in self.units.encode(wavs)]
        if self.pitch is not None:
            for d, p in zip(out, self.pitch.encode(wavs, speakers)):
                d["pitch"] = p
            for d, s in zip(out, self.style.encode(wavs)):
                d["style"] = s
        return out

    def encode_units(self, audio: AudioSource | Sequence[AudioSource], speaker: str | None | Sequence[str | None] = None):
        """Meta's unit dict(s) of one audio source or a list of them.

        Args:
            audio: a path, file bytes, 16 kHz array/tensor, or a list of those (encoded as one
                padded batch).
            speaker: speaker id(s) for pitch normalisation (unknown / None: the utterance's own
                mean log-F0).

        Returns:
            ``{"audio": path (when given a path), "hubert": "12 7 7 ...", "pitch": "...",
            "style": "..."}`` (space-separated ids, not deduplicated), or a list of them.
        """
        single = not isinstance(audio, (list, tuple))
        sources = [audio] if single else list(audio)
        speakers = [speaker] * len(sources) if single or speaker is None or isinstance(speaker, str) else list(speaker)
        wavs = [load_audio(s) for s in sources]
        dicts = []
        for src, streams in zip(sources, self.encode_streams(wavs, speakers)):
            d: dict[str, str] = {}
            if isinstance(src, (str, os.PathLike)):
                d["audio"] = str(src)
            d.update({k: " ".join(map(str, v.tolist())) for k, v in streams.items()})
            dicts.append(d)
        return dicts[0] if single else dicts

    def encode_string(self, audio: AudioSource | Sequence[AudioSource], speaker=None, **kwargs):
        """Token string(s) (``[St..][Pi..][Hu..]...``) via :func:`spiritlm.formats.units_to_string`.

        ``kwargs`` go to ``units_to_string`` (rates, deduplication).
        """
        units = self.encode_units(audio, speaker)
        expressive = self.kind == "expressive"

        def render(u):
            return units_to_string(u, has_pitch=expressive, has_style=expressive, **kwargs)

        return [render(u) for u in units] if isinstance(units, list) else render(units)

    def decode(self, units: dict | str, speaker: int | str = 0, dur_pred: bool | None = None, vocoder=None) -> np.ndarray:
        """Units back to a 16 kHz float32 waveform with a unit vocoder (Meta's ``decode``).

        Args:
            units: a token string (``"[St3][Pi1][Hu5]…"``) or a unit dict.
            speaker: speaker index or name of the vocoder.
            dur_pred: predict unit durations; default as in Meta's decoder (see
                :meth:`spiritlm.vocoder.Vocoder.decode`).
            vocoder: the :class:`spiritlm.vocoder.Vocoder` to use (default: ``self.vocoder``).
        """
        voc = vocoder if vocoder is not None else self.vocoder
        if voc is None:
            raise ValueError("decode needs a vocoder: SpeechTokenizer(..., vocoder=Vocoder.from_pretrained(dir)) or decode(..., vocoder=)")
        return voc.decode(units, speaker=speaker, dur_pred=dur_pred)

    # -----------------------------------------------------------------------------------------

    def save(self, directory: str | os.PathLike) -> None:
        """Writes the tokenizer directory (see the module docstring)."""
        os.makedirs(directory, exist_ok=True)
        self.units.save(os.path.join(directory, "units"))
        if self.pitch is not None:
            self.pitch.save(os.path.join(directory, "pitch"))
            self.style.save(os.path.join(directory, "style"))
        meta = {
            "format": FORMAT, "version": 1, "kind": self.kind,
            "n_units": self.units.n_units,
            "n_pitch": self.pitch.codebook_size if self.pitch else 0,
            "n_style": self.style.num_tokens_vocab if self.style else 0,
            "rates": dict(STREAM_RATES),
        }
        with open(os.path.join(directory, "config.json"), "w") as f:
            json.dump(meta, f, indent=1)

    @classmethod
    def load(cls, directory: str | os.PathLike, device: str | torch.device | None = "cpu", precision: str = "fp32") -> SpeechTokenizer:
        """Loads a tokenizer directory onto ``device`` (``cpu``, ``cuda``, ``auto``).

        ``precision="bf16"`` computes HuBERT's matrix products in bfloat16 (~2x faster; a few
        units in a thousand differ from fp32, see :class:`~spiritlm.tokenizers.features.HubertBackend`);
        ``"fp32"`` (default) is exact.
        """
        path = os.path.join(directory, "config.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: not a speech tokenizer directory (no config.json)")
        with open(path) as f:
            meta = json.load(f)
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path}: not a speech tokenizer config (format {meta.get('format')!r})")
        device = resolve_device(device)
        units = UnitTokenizer.load(os.path.join(directory, "units"), device, precision)
        pitch = style = None
        if meta["kind"] == "expressive":
            pitch = load_pitch_tokenizer(os.path.join(directory, "pitch")).to(device)
            pitch.cfg.f0.device = str(device)
            style = StyleTokenizer.load(os.path.join(directory, "style")).to(device)
        return cls(units, pitch, style)
