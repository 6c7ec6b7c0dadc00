"""Training checkpoints: sharded saves (``torch.distributed.checkpoint``), resharded loads, pruning.

A checkpoint ``checkpoints/step_N/`` holds:

* ``dcp/`` — the model weights and the AdamW state, each rank writing only its own shards
  (``.metadata`` + ``__R_0.distcp``; layout in :mod:`spiritlm.model.sharded`). Nothing is
  gathered on rank 0, and any number of processes (one included) can read it back: DCP
  reassembles the pieces each reader's layout asks for.
* ``model_config.json`` — the architecture (fairseq2 ``LLaMAConfig``).
* ``trainer_state_rank{R}.pt`` — rank R's scheduler, RNG and data-loader position, the
  optimiser's hyper-parameters (``param_groups``), the world size and ``rms_norm_eps``; small,
  read with ``torch.load(weights_only=True)``.
* ``COMPLETE`` — written last (atomically, by rank 0) once every rank's shards are on disk. Only
  complete checkpoints are resumed from or pruned; pruning never touches the newest one.

Saving can be asynchronous (``--train.async_save true``): the shards are copied to CPU memory
(one copy of this rank's shard), training goes on while a background thread writes them, and the
checkpoint is marked complete when the next save starts or training ends. Its collectives use a
separate gloo process group so that they never interleave with the training's own.

Reading checks before it loads (:func:`inspect_checkpoint`: every file present and as long as
the metadata says, every rank's trainer state readable) and raises :class:`CheckpointError`
naming the first bad file, so a resume can fall back to the previous complete checkpoint. A
resume with another world size (resharding) takes the weights and optimiser state exactly and
re-partitions the data stream (:meth:`spiritlm.data.loader.PackedLoader.load_resharded`).
"""

from __future__ import annotations

import random
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from spiritlm.atomic import atomic_file
from spiritlm.checkpointing import COMPLETE_NAME, CheckpointError, checkpoint_step, mark_complete, prune_checkpoints, read_checked
from spiritlm.checkpointing import set_aside as set_aside  # re-exported: the recipe's and tests' name
from spiritlm.model import CONFIG_NAME, LLaMAConfig
from spiritlm.model.sharded import DCP_DIR, SafeFileSystemReader, WeightsOnlyLoadPlanner, check_storage, read_metadata
from spiritlm.distributed import Dist

TRAINER_KEYS = ("step", "scheduler", "rng", "loader", "param_groups", "world_size")


def trainer_state_name(rank: int) -> str:
    return f"trainer_state_rank{rank}.pt"


@dataclass
class CheckpointInfo:
    """What a resume knows about a checkpoint before loading any weight."""

    path: Path
    step: int
    model_config: LLaMAConfig
    trainers: list[dict[str, Any]]  # every saving rank's trainer state, by rank

    @property
    def world_size(self) -> int:
        """Number of processes that wrote the checkpoint."""
        return len(self.trainers)


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
# The sharded state of a (possibly wrapped) model and its optimiser
# ---------------------------------------------------------------------------------------------


def sharded_state(model: nn.Module, optimizer) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``({"model": weights, "optim": AdamW tensors}, param_groups)`` of this rank.

    Under FSDP the tensors are this rank's ``DTensor`` shards; under DDP or one process, whole
    tensors (DCP writes replicated tensors once). Only tensors go to DCP: the optimiser's
    hyper-parameters (``param_groups``) travel in the trainer state. Creates the AdamW state if
    no step was taken yet (DCP loads into existing tensors).
    """
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict
    from torch.distributed.fsdp import FSDPModule

    # FSDP2 leaves the root's parameters unsharded after a forward without backward (the
    # validation pass); the optimiser holds the sharded ones, so reshard before matching them.
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()
    msd = get_model_state_dict(model)
    osd = get_optimizer_state_dict(model, optimizer)
    return {"model": msd, "optim": osd["state"]}, osd["param_groups"]


def _dcp_kwargs(d: Dist, process_group=None) -> dict[str, Any]:
    return {"no_dist": True} if d.world_size == 1 else {"process_group": process_group}


class Checkpointer:
    """Writes ``checkpoints/step_N`` of a run, synchronously or in the background, and prunes.

    Args:
        run_dir: the run directory.
        d: the process group.
        keep: complete checkpoints kept (0: all); the newest complete one is never removed.
        async_save: write the shards in a background thread (:meth:`wait` finishes a pending
            save; :meth:`save` calls it first).
    """

    def __init__(self, run_dir: Path, d: Dist, *, keep: int, async_save: bool = False) -> None:
        self.run_dir, self.d, self.keep, self.async_save = Path(run_dir), d, keep, async_save
        self._pending: tuple[int, Path, Any] | None = None
        self._group = None
        if async_save and d.world_size > 1:
            import torch.distributed as dist

            # the background thread's collectives must not interleave with the training's
            self._group = dist.new_group(backend="gloo")

    def save(self, step: int, model: nn.Module, optimizer, mcfg: LLaMAConfig, trainer_state: dict[str, Any]) -> Path:
        """Saves step ``step``: every rank its shards and its trainer state (a collective)."""
        import torch.distributed.checkpoint as dcp

        from spiritlm.model.config import save_config

        self.wait()
        d = self.d
        ckpt = self.run_dir / "checkpoints" / f"step_{step}"
        if d.main:
            if ckpt.exists():  # an incomplete save of this step by a killed run (complete ones are resumed from)
                shutil.rmtree(ckpt)
            ckpt.mkdir(parents=True)
            save_config(mcfg, ckpt / CONFIG_NAME)
        d.barrier()
        state, param_groups = sharded_state(model, optimizer)
        trainer = {"step": step, "world_size": d.world_size, "param_groups": param_groups, **trainer_state}
        with atomic_file(ckpt / trainer_state_name(d.rank), "wb") as f:
            torch.save(trainer, f)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", UserWarning)  # single process: "assuming the intent is to save in a single process"
            if self.async_save:
                future = dcp.async_save(state, checkpoint_id=str(ckpt / DCP_DIR), **_dcp_kwargs(d, self._group))
                self._pending = (step, ckpt, future)
            else:
                dcp.save(state, checkpoint_id=str(ckpt / DCP_DIR), **_dcp_kwargs(d))
                self._complete(step, ckpt)
        return ckpt

    def wait(self) -> Path | None:
        """Finishes a pending asynchronous save (marks it complete, prunes); returns its path."""
        if self._pending is None:
            return None
        step, ckpt, future = self._pending
        self._pending = None
        future.result()
        self._complete(step, ckpt)
        return ckpt

    def _complete(self, step: int, ckpt: Path) -> None:
        self.d.barrier()  # every rank's shards are written
        if self.d.main:
            mark_complete(ckpt, step)
            prune_checkpoints(self.run_dir, step, self.keep)
        self.d.barrier()

    def close(self) -> None:
        self.wait()
        if self._group is not None:
            import torch.distributed as dist

            dist.destroy_process_group(self._group)
            self._group = None


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def inspect_checkpoint(ckpt: Path) -> CheckpointInfo:
    """Checks ``ckpt`` without reading weights: the config, the DCP metadata, every shard file's
    length, every rank's trainer state. Raises :class:`CheckpointError` naming the bad file."""
    from spiritlm.model.config import load_config

    ckpt = Path(ckpt)
    config = read_checked(ckpt / CONFIG_NAME, load_config)
    metadata = read_checked(ckpt / DCP_DIR / ".metadata", lambda p: read_metadata(ckpt))
    try:
        check_storage(ckpt, metadata)
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None
    files = sorted(ckpt.glob("trainer_state_rank*.pt"))
    if not files:
        raise CheckpointError(f"{ckpt / trainer_state_name(0)}: missing")
    first = read_checked(files[0], lambda p: torch.load(p, map_location="cpu", weights_only=True))
    world = int(first.get("world_size", len(files))) if isinstance(first, dict) else len(files)
    step = checkpoint_step(ckpt)
    trainers = []
    for rank in range(world):
        f = ckpt / trainer_state_name(rank)
        t = read_checked(f, lambda p: torch.load(p, map_location="cpu", weights_only=True))
        missing = [k for k in TRAINER_KEYS if k not in t]
        if missing:
            raise CheckpointError(f"{f}: no {missing[0]!r} entry")
        if step is not None and int(t["step"]) != step:
            raise CheckpointError(f"{f}: holds step {t['step']}, not {step}")
        trainers.append(t)
    return CheckpointInfo(ckpt, int(trainers[0]["step"]), config, trainers)


def load_checkpoint(info: CheckpointInfo, model: nn.Module, optimizer, d: Dist) -> None:
    """Loads the weights and the AdamW state of ``info`` into this rank's (sharded) model and
    optimiser, whatever the world size that saved them (a collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    state, _ = sharded_state(model, optimizer)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            dcp.load(state, storage_reader=SafeFileSystemReader(str(info.path / DCP_DIR)), planner=WeightsOnlyLoadPlanner(),
                     **_dcp_kwargs(d))
    except Exception as exc:  # noqa: BLE001 - bytes that pass the length check but do not decode
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise CheckpointError(f"{info.path / DCP_DIR}: unreadable ({reason})") from exc
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, optimizer, {"state": state["optim"], "param_groups": info.trainers[0]["param_groups"]})
