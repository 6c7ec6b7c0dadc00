"""Utilities the speech tokenizers share: batching and padding waveforms, masks, devices, torch threads, the pyworld import."""

from __future__ import annotations

import importlib.metadata
import sys
import types
import warnings
from collections.abc import Sequence

import numpy as np
import torch


def import_pyworld():
    """Imports :mod:`pyworld`.

    pyworld 0.3.5 reads its version through ``pkg_resources``, which recent setuptools no longer
    ships. When ``pkg_resources`` is missing, a minimal stand-in (``get_distribution(name).version``
    from :mod:`importlib.metadata`) is registered for the duration of the import only.
    """
    if "pyworld" in sys.modules:
        return sys.modules["pyworld"]
    try:
        with warnings.catch_warnings():  # setuptools<81 warns that pkg_resources is deprecated
            warnings.simplefilter("ignore", UserWarning)
            import pkg_resources  # noqa: F401

            import pyworld

        return pyworld
    except ImportError:
        pass
    shim = types.ModuleType("pkg_resources")
    shim.get_distribution = lambda name: types.SimpleNamespace(version=importlib.metadata.version(name))  # type: ignore[attr-defined]
    sys.modules["pkg_resources"] = shim
    try:
        import pyworld
    finally:
        if sys.modules.get("pkg_resources") is shim:
            del sys.modules["pkg_resources"]
    return pyworld


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``"auto"`` -> cuda if available else cpu; a clear error for unavailable cuda."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device} requested but CUDA is not available on this machine")
    return device


def load_audio_batch(items: Sequence, errors: list[dict]) -> tuple[list, list[np.ndarray]]:
    """Loads the audio of manifest items (``.id``, ``.audio``) as 16 kHz float32 waveforms.

    Unreadable audio is skipped and appended to ``errors`` as ``{"id", "audio", "error"}`` so a
    batch job can go on; returns the readable items and their waveforms, in order.
    """
    from spiritlm.audio import AudioError, load_audio

    kept, wavs = [], []
    for it in items:
        try:
            wavs.append(load_audio(it.audio))
            kept.append(it)
        except AudioError as exc:
            errors.append({"id": it.id, "audio": it.audio, "error": str(exc)})
    return kept, wavs
