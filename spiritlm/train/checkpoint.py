"""Training checkpoints: writing ``checkpoints/step_N``, reading it back whole or not at all, pruning.

A checkpoint directory holds ``model.safetensors`` + ``model_config.json`` (the gathered model,
fairseq2 names), ``optimizer.pt`` (the gathered AdamW state), ``trainer_state_rank{R}.pt`` (the
scheduler, RNG and data-loader state of each rank) and ``COMPLETE``, written last. Everything is
safetensors or loadable with ``torch.load(weights_only=True)``.

Reading is all-or-nothing: :func:`read_checkpoint` loads every file before anything is applied
and raises :class:`CheckpointError` naming the first unreadable file, so that a resume can fall
back to the previous complete checkpoint (:meth:`spiritlm.train.recipe.TrainRecipe.setup`).
"""

from __future__ import annotations

import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from spiritlm.model import CONFIG_NAME, WEIGHTS_NAME, LLaMAConfig, checkpoint_step, complete_checkpoints
from spiritlm.train.distributed import Dist

OPTIMIZER_NAME = "optimizer.pt"
COMPLETE_NAME = "COMPLETE"


def trainer_state_name(rank: int) -> str:
    return f"trainer_state_rank{rank}.pt"


class CheckpointError(Exception):
    """A checkpoint file that cannot be read; the message starts with the file's path."""


@dataclass
class CheckpointState:
    """Everything one rank needs to resume, read from a checkpoint directory."""

    path: Path
    step: int
    model_config: LLaMAConfig
    model: dict[str, Tensor]
    optimizer: dict[str, Any]
    trainer: dict[str, Any]


# ---------------------------------------------------------------------------------------------
# RNG state
# ---------------------------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """All RNG states as tensors/ints/tuples (loadable with ``weights_only=True``)."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "kind": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def _sd_options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_model_state(model: nn.Module) -> dict[str, Tensor]:
    """The whole (gathered) model state on CPU; a collective under FSDP: every rank calls it."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_sd_options())


def save_checkpoint(
    run_dir: Path, step: int, model: nn.Module, mcfg: LLaMAConfig, optimizer, trainer_state: dict[str, Any], d: Dist, keep: int
) -> Path:
    """Writes ``checkpoints/step_N`` (rank 0 the gathered model and optimiser state, every rank
    its ``trainer_state``), marks it ``COMPLETE``, then prunes to ``keep`` checkpoints."""
    from safetensors.torch import save_file
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    from spiritlm.model.config import save_config

    ckpt = run_dir / "checkpoints" / f"step_{step}"
    state = full_model_state(model)
    optim_state = get_optimizer_state_dict(model, optimizer, options=_sd_options())
    if d.main:
        if ckpt.exists():
            shutil.rmtree(ckpt)
        ckpt.mkdir(parents=True)
        weights = {k: v.detach().cpu().contiguous() for k, v in state.items()}
        if mcfg.tied_embeddings:
            weights.pop("final_proj.weight", None)
        save_file(weights, str(ckpt / WEIGHTS_NAME))
        save_config(mcfg, ckpt / CONFIG_NAME)
        torch.save(optim_state, ckpt / OPTIMIZER_NAME)
    d.barrier()
    torch.save({"step": step, **trainer_state}, ckpt / trainer_state_name(d.rank))
    d.barrier()
    if d.main:
        (ckpt / COMPLETE_NAME).write_text(f"{step}\n")
        prune_checkpoints(run_dir, step, keep)
    d.barrier()
    return ckpt


def prune_checkpoints(run_dir: Path, newest: int, keep: int) -> list[Path]:
    """Removes complete checkpoints older than the ``keep`` most recent up to step ``newest``.

    ``newest`` (the checkpoint just written) is always kept, whatever the other step numbers
    (a set-aside or stale ``step_N`` with a larger N is not counted); ``keep=0`` keeps all.
    """
    if keep <= 0:
        return []
    done = [(s, p) for s, p in complete_checkpoints(run_dir) if s <= newest]
    removed = [p for s, p in done[:-keep] if s != newest]
    for p in removed:
        shutil.rmtree(p, ignore_errors=True)
    return removed


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def _read(path: Path, reader):
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    try:
        return reader(path)
    except Exception as exc:  # truncated or corrupt files raise whatever their library raises
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise CheckpointError(f"{path}: unreadable ({reason})") from exc


def read_checkpoint(ckpt: Path, rank: int) -> CheckpointState:
    """Reads every file this rank needs from ``ckpt``, or raises :class:`CheckpointError`."""
    from safetensors.torch import load_file

    from spiritlm.model.config import load_config

    ckpt = Path(ckpt)
    config = _read(ckpt / CONFIG_NAME, load_config)
    model = _read(ckpt / WEIGHTS_NAME, lambda p: load_file(str(p)))
    if "final_proj.weight" not in model and "decoder_frontend.embed.weight" in model:  # tied tables
        model["final_proj.weight"] = model["decoder_frontend.embed.weight"]
    optimizer = _read(ckpt / OPTIMIZER_NAME, lambda p: torch.load(p, map_location="cpu", weights_only=True))
    trainer_file = ckpt / trainer_state_name(rank)
    if not trainer_file.is_file() and any(ckpt.glob("trainer_state_rank*.pt")):
        raise CheckpointError(f"{trainer_file}: missing (the run was saved with another number of processes)")
    trainer = _read(trainer_file, lambda p: torch.load(p, map_location="cpu", weights_only=True))
    for key in ("step", "scheduler", "rng", "loader"):
        if key not in trainer:
            raise CheckpointError(f"{trainer_file}: no {key!r} entry")
    step = checkpoint_step(ckpt)
    if step is not None and int(trainer["step"]) != step:
        raise CheckpointError(f"{trainer_file}: holds step {trainer['step']}, not {step}")
    return CheckpointState(ckpt, int(trainer["step"]), config, model, optimizer, trainer)


def set_aside(ckpt: Path) -> Path:
    """Renames an unreadable ``step_N`` to ``step_N.bad`` (kept for inspection, never resumed from)."""
    target = ckpt.with_name(ckpt.name + ".bad")
    n = 1
    while target.exists():
        n += 1
        target = ckpt.with_name(f"{ckpt.name}.bad{n}")
    ckpt.rename(target)
    return target


def apply_optimizer_state(model: nn.Module, optimizer, state: dict[str, Any]) -> None:
    """Loads a gathered optimiser state into the (possibly sharded) optimiser."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=_sd_options())
