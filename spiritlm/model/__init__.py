"""The Spirit LM language model: fairseq2's LLaMA with a speech-extended vocabulary.

* :mod:`spiritlm.model.config`: presets (``tiny``, ``llama2-7b``, ``llama2-7b-base``,
  ``llama2-7b-expressive``) as fairseq2 ``LLaMAConfig``\\ s, JSON (de)serialisation;
* :mod:`spiritlm.model.build`: building the model, extending the vocabulary (new rows = mean of
  the old rows + noise), saving/loading safetensors checkpoints with fairseq2 names;
* :mod:`spiritlm.model.hf`: Hugging Face LLaMA import/export (fairseq2's converters).

The model maps token ids ``[B, L]`` to logits ``[B, L, V]``::

    from fairseq2.nn import BatchLayout
    logits = model(ids, BatchLayout.of(ids))
"""

from __future__ import annotations

from pathlib import Path

import torch

from spiritlm.model.build import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    create_model,
    extend_vocabulary,
    extend_vocabulary_state,
    load_model,
    load_weights_into,
    num_parameters,
    save_model,
)
from spiritlm.model.config import (
    PRESETS,
    LLaMAConfig,
    config_from_dict,
    config_to_dict,
    load_config,
    model_config,
    save_config,
)
from spiritlm.model.hf import EXPORT_INFO, export_step, hf_to_llama_config, is_hf_dir, load_hf_model, read_hf_weights, save_hf_model
from spiritlm.checkpointing import checkpoint_step, complete_checkpoints  # the one checkpoint-folder rule
from spiritlm.model.sharded import is_sharded_checkpoint

__all__ = [
    "CONFIG_NAME",
    "EXPORT_INFO",
    "checkpoint_step",
    "complete_checkpoints",
    "export_step",
    "WEIGHTS_NAME",
    "PRESETS",
    "LLaMAConfig",
    "config_from_dict",
    "config_to_dict",
    "create_model",
    "extend_vocabulary",
    "extend_vocabulary_state",
    "read_model_config",
    "read_model_weights",
    "find_latest_checkpoint",
    "is_hf_dir",
    "load_any_model",
    "load_config",
    "load_hf_model",
    "load_model",
    "load_weights_into",
    "model_config",
    "num_parameters",
    "save_config",
    "save_hf_model",
    "save_model",
]


def find_latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The ``checkpoints/step_N`` directory of ``run_dir`` with the largest complete N."""
    done = complete_checkpoints(run_dir)
    return done[-1][1] if done else None


def _checkpoint_is_newer(checkpoint: Path, export: Path) -> bool:
    step = export_step(export)
    if step is not None:
        return checkpoint_step(checkpoint) > step  # type: ignore[operator]
    return (checkpoint / "COMPLETE").stat().st_mtime > (export / "config.json").stat().st_mtime


def _find_tokenizer(directory: Path) -> Path | None:
    for d in (directory, directory.parent, directory.parent.parent):
        if (d / "tokenizer.model").is_file():
            return d / "tokenizer.model"
    return None


def load_any_model(
    path: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = torch.float32
):
    """Loads a model from a Hugging Face directory, a run directory or a checkpoint directory.

    In a run directory the newer of its ``hf/`` export and its newest complete checkpoint is
    loaded: the export records its step (``spiritlm_export.json``; an export without one is
    dated by its files' modification time against the checkpoint's ``COMPLETE`` marker).

    Returns:
        ``(model, config, tokenizer_path or None)``.

    Raises:
        FileNotFoundError: naming ``path`` when it holds none of these layouts.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such model directory")
    if is_hf_dir(path):
        model, config = load_hf_model(path, device=device, dtype=dtype)
        return model, config, _find_tokenizer(path)
    if ((path / WEIGHTS_NAME).is_file() or is_sharded_checkpoint(path)) and (path / CONFIG_NAME).is_file():
        model, config = load_model(path, device=device, dtype=dtype)
        return model, config, _find_tokenizer(path)
    latest = find_latest_checkpoint(path)
    if is_hf_dir(path / "hf") and (latest is None or not _checkpoint_is_newer(latest, path / "hf")):
        model, config = load_hf_model(path / "hf", device=device, dtype=dtype)
        return model, config, _find_tokenizer(path / "hf")
    if latest is not None:
        model, config = load_model(latest, device=device, dtype=dtype)
        return model, config, _find_tokenizer(latest)
    raise FileNotFoundError(
        f"{path}: not a model directory (expected a Hugging Face config.json, hf/, "
        f"{WEIGHTS_NAME} + {CONFIG_NAME}, or checkpoints/step_N)"
    )


def read_model_config(path: str | Path) -> tuple[LLaMAConfig, float]:
    """``(config, rms_norm_eps)`` of any layout :func:`load_any_model` reads, from its JSON
    files only (no weight is read): what every rank needs to build the model on the meta
    device."""
    import json

    path = Path(path)
    if is_hf_dir(path):
        return hf_to_llama_config(json.loads((path / "config.json").read_text()), source=str(path / "config.json"))
    if (path / CONFIG_NAME).is_file():
        return load_config(path / CONFIG_NAME), 1e-5
    latest = find_latest_checkpoint(path) if path.is_dir() else None
    if is_hf_dir(path / "hf") and (latest is None or not _checkpoint_is_newer(latest, path / "hf")):
        return read_model_config(path / "hf")
    if latest is not None:
        return read_model_config(latest)
    raise FileNotFoundError(f"{path}: not a model directory (expected a Hugging Face config.json, hf/, "
                            f"{WEIGHTS_NAME} + {CONFIG_NAME}, or checkpoints/step_N)")


def read_model_weights(path: str | Path, *, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The fairseq2-named weights of any layout :func:`load_any_model` reads, without building a
    model: a Hugging Face directory is read tensor by tensor from its memory-mapped safetensors,
    so the peak is one copy of the weights in ``dtype``."""
    path = Path(path)
    if is_hf_dir(path):
        config, _ = read_model_config(path)
        return read_hf_weights(path, config, dtype=dtype)
    model, _, _ = load_any_model(path, dtype=dtype)
    return dict(model.state_dict())
