"""``spiritlm.vocoder``: unit HiFi-GAN (speechbrain's generator layout; its discriminators and losses) with a duration predictor — units, pitch, style and speaker to 16 kHz speech.

Modules: ``config`` (VocoderConfig and presets), ``generator`` (HifiGANGenerator), ``model``
(UnitHifiGAN, DurationPredictor), ``meta`` (Meta's released layout), ``api`` (Vocoder),
``streaming`` (``Vocoder.stream``), ``cli`` (``spiritlm vocoder``).
Importing this package is light: torch loads when :class:`Vocoder` is first used (speechbrain
only for training).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["Vocoder", "VocoderConfig"]

if TYPE_CHECKING:  # pragma: no cover
    from .api import Vocoder
    from .config import VocoderConfig


def __getattr__(name: str) -> Any:
    if name == "Vocoder":
        from .api import Vocoder

        return Vocoder
    if name == "VocoderConfig":
        from .config import VocoderConfig

        return VocoderConfig
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
