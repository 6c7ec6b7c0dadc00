"""Reading and writing Meta's released vocoder layout (``hifigan_spiritlm_base/``, ``hifigan_spiritlm_expressive_w2v2/``).

A Meta vocoder folder holds::

    config.json     num_embeddings, embedding_dim, num_f0_tokens, f0_hop_size, code_hop_size,
                    num_style_tokens, style_hop_size, multispkr, num_speakers, multistyle,
                    num_styles, model_in_dim, upsample_*, resblock_*, dur_predictor_params,
                    sampling_rate (and training-only keys, ignored)
    generator.pt    {"generator": state_dict}, weight-norm convolutions as weight_g / weight_v
    speakers.txt    one speaker name per line (optional)
    styles.txt      one style name per line (optional; the base vocoder's style ids)

State-dict names (Meta → :class:`~spiritlm.vocoder.model.UnitHifiGAN`):

=====================================  ==================================================
``dict`` / ``f0_dict`` / ``style_dict``  ``unit_embedding`` / ``pitch_embedding`` / ``style_embedding``
``spkr`` / ``style``                   ``speaker_embedding`` / ``style_id_embedding``
``dur_predictor.conv{1,2}.0``          ``duration_predictor.conv{1,2}``
``dur_predictor.ln{1,2}``, ``.proj``   ``duration_predictor.norm{1,2}``, ``.proj``
``<conv>.weight_g`` / ``.weight_v``    ``<conv>.conv.parametrizations.weight.original0`` / ``original1``
``<conv>.bias``                        ``<conv>.conv.bias``
=====================================  ==================================================

for ``<conv>`` in ``conv_pre``, ``ups.N``, ``resblocks.N.convs{1,2}.M``, ``conv_post``: the same
modules, the same weight-norm split (dim 0), so loading and exporting are renames and
round-trip exactly. Checkpoints are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from spiritlm.errors import UserError

from .config import VocoderConfig
from .model import UnitHifiGAN

__all__ = [
    "is_meta_dir",
    "load_meta",
    "export_meta",
    "meta_to_ours",
    "ours_to_meta",
    "read_names",
    "write_names",
]

_TABLES = {
    "dict": "unit_embedding",
    "f0_dict": "pitch_embedding",
    "style_dict": "style_embedding",
    "spkr": "speaker_embedding",
    "style": "style_id_embedding",
}
_TABLES_BACK = {v: k for k, v in _TABLES.items()}
_CONV = r"(conv_pre|conv_post|ups\.\d+|resblocks\.\d+\.convs[12]\.\d+)"
_WN = {"weight_g": "parametrizations.weight.original0", "weight_v": "parametrizations.weight.original1"}
_WN_BACK = {v: k for k, v in _WN.items()}


def _meta_key_to_ours(key: str) -> str:
    if m := re.fullmatch(r"(\w+)\.weight", key):
        if m.group(1) in _TABLES:
            return f"{_TABLES[m.group(1)]}.weight"
    if m := re.fullmatch(r"dur_predictor\.conv([12])\.0\.(weight|bias)", key):
        return f"duration_predictor.conv{m.group(1)}.{m.group(2)}"
    if m := re.fullmatch(r"dur_predictor\.ln([12])\.(weight|bias)", key):
        return f"duration_predictor.norm{m.group(1)}.{m.group(2)}"
    if m := re.fullmatch(r"dur_predictor\.proj\.(weight|bias)", key):
        return f"duration_predictor.proj.{m.group(1)}"
    if m := re.fullmatch(_CONV + r"\.(weight_g|weight_v|weight|bias)", key):
        return f"{m.group(1)}.conv.{_WN.get(m.group(2), m.group(2))}"
    raise KeyError(key)


def _our_key_to_meta(key: str) -> str:
    if m := re.fullmatch(r"(\w+)\.weight", key):
        if m.group(1) in _TABLES_BACK:
            return f"{_TABLES_BACK[m.group(1)]}.weight"
    if m := re.fullmatch(r"duration_predictor\.conv([12])\.(weight|bias)", key):
        return f"dur_predictor.conv{m.group(1)}.0.{m.group(2)}"
    if m := re.fullmatch(r"duration_predictor\.norm([12])\.(weight|bias)", key):
        return f"dur_predictor.ln{m.group(1)}.{m.group(2)}"
    if m := re.fullmatch(r"duration_predictor\.proj\.(weight|bias)", key):
        return f"dur_predictor.proj.{m.group(1)}"
    if m := re.fullmatch(_CONV + r"\.conv\.(parametrizations\.weight\.original[01]|weight|bias)", key):
        return f"{m.group(1)}.{_WN_BACK.get(m.group(2), m.group(2))}"
    raise KeyError(key)


def meta_to_ours(state: dict[str, Tensor], source: str = "generator.pt") -> dict[str, Tensor]:
    """Renames Meta's generator state dict to :class:`UnitHifiGAN`'s (tensors shared, not copied)."""
    out = {}
    for key, value in state.items():
        try:
            out[_meta_key_to_ours(key)] = value
        except KeyError:
            raise UserError(f"{source}: unexpected tensor {key!r} in Meta's generator state dict") from None
    return out


def ours_to_meta(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Renames :class:`UnitHifiGAN`'s state dict to Meta's names.

    Folded convolutions (plain ``weight``, after ``remove_weight_norm``) are split back into
    ``weight_g`` (the L2 norm of each output slice, dim 0) and ``weight_v`` (the weight), which
    Meta's loader expects and which give the same weight to float rounding.
    """
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        meta_key = _our_key_to_meta(key)
        if re.fullmatch(_CONV + r"\.weight", meta_key):
            base = meta_key[: -len(".weight")]
            out[f"{base}.weight_g"] = _norm_except_dim0(value)
            out[f"{base}.weight_v"] = value
        else:
            out[meta_key] = value
    return out


def _norm_except_dim0(w: Tensor) -> Tensor:
    """``torch.norm_except_dim(w, 2, 0)``: the L2 norm of each ``w[i]``, shaped ``[n, 1, …]``."""
    return w.flatten(1).norm(dim=1).view(-1, *([1] * (w.dim() - 1)))


# ---------------------------------------------------------------------------------------------
# Folders
# ---------------------------------------------------------------------------------------------


def is_meta_dir(path: str | os.PathLike) -> bool:
    """A folder with Meta's ``generator.pt`` (and ``config.json``)."""
    return (Path(path) / "generator.pt").is_file()


def read_names(path: str | os.PathLike) -> list[str] | None:
    """Lines of ``speakers.txt`` / ``styles.txt`` (stripped), or ``None`` if the file is absent."""
    path = Path(path)
    if not path.is_file():
        return None
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f]


def write_names(path: str | os.PathLike, names: list[str]) -> None:
    """Writes one name per line, atomically."""
    _atomic(path, lambda tmp: Path(tmp).write_text("".join(f"{n}\n" for n in names), encoding="utf-8"))


def load_meta(path: str | os.PathLike) -> tuple[UnitHifiGAN, list[str] | None, list[str] | None]:
    """Loads a Meta vocoder folder (or its ``generator.pt``) onto the CPU, weight norm kept.

    Returns:
        ``(model in eval mode, speaker names or None, style names or None)``.

    Raises:
        UserError: missing files, a config this architecture cannot express, or tensors that
            do not fit.
    """
    path = Path(path)
    folder = path.parent if path.is_file() else path
    ckpt = path if path.is_file() else folder / "generator.pt"
    cfg_path = folder / "config.json"
    if not ckpt.is_file():
        raise UserError(f"{ckpt}: not found (a Meta vocoder folder holds generator.pt and config.json) (--vocoder)")
    if not cfg_path.is_file():
        raise UserError(f"{cfg_path}: not found next to generator.pt (--vocoder)")
    try:
        with open(cfg_path, encoding="utf-8") as f:
            config = VocoderConfig.from_meta(json.load(f))
    except (ValueError, TypeError) as exc:
        raise UserError(f"{cfg_path}: {exc}") from None
    try:
        obj = torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated files
        raise UserError(f"{ckpt}: cannot read the checkpoint ({str(exc).splitlines()[0][:200]}) (--vocoder)") from None
    if not isinstance(obj, dict) or "generator" not in obj:
        raise UserError(f"{ckpt}: expected {{'generator': state_dict}}")
    state = meta_to_ours(obj["generator"], str(ckpt))
    model = UnitHifiGAN(config)
    if state and not any(k.endswith("original0") for k in state):
        model.remove_weight_norm()  # a checkpoint saved with weight norm already folded
    _load_state(model, state, str(ckpt))
    return model.eval(), read_names(folder / "speakers.txt"), read_names(folder / "styles.txt")


def export_meta(
    model: UnitHifiGAN,
    path: str | os.PathLike,
    speakers: list[str] | None = None,
    styles: list[str] | None = None,
) -> None:
    """Writes ``model`` in Meta's layout (``config.json``, ``generator.pt``, names files).

    Files are written under temporary names and renamed. A vocoder with a harmonic source
    (``config.harmonic_source``, e.g. ``tiny``) is refused: Meta's generator has no such module,
    and dropping it would change the audio.
    """
    if model.config.harmonic_source:
        raise UserError(f"{path}: this vocoder has a harmonic source (harmonic_source=true), which Meta's layout "
                        "cannot hold; save it in our folder format instead")
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in ours_to_meta(model.state_dict()).items()}
    _atomic(folder / "config.json", lambda tmp: Path(tmp).write_text(json.dumps(model.config.to_meta(), indent=2) + "\n"))
    _atomic(folder / "generator.pt", lambda tmp: torch.save({"generator": state}, tmp))
    if speakers is not None:
        write_names(folder / "speakers.txt", speakers)
    if styles is not None:
        write_names(folder / "styles.txt", styles)


def _load_state(model: UnitHifiGAN, state: dict[str, Tensor], source: str) -> None:
    """``load_state_dict`` with one-line errors naming the file and the tensor."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    if missing or extra:
        what = f"missing {missing[0]!r}" if missing else f"unexpected {extra[0]!r}"
        n = len(missing) + len(extra)
        raise UserError(f"{source}: checkpoint does not match its config ({what}{f' and {n - 1} more' if n > 1 else ''})")
    for key, value in state.items():
        if tuple(value.shape) != tuple(own[key].shape):
            raise UserError(f"{source}: tensor {key!r} has shape {tuple(value.shape)}, the config gives {tuple(own[key].shape)}")
    model.load_state_dict(state)


def _atomic(path: str | os.PathLike, write: Callable[[str], object]) -> None:
    """Calls ``write(tmp)`` for a temporary name next to ``path`` (:func:`spiritlm.atomic.atomic_path`)."""
    from spiritlm.atomic import atomic_path

    with atomic_path(path) as tmp:
        write(str(tmp))
