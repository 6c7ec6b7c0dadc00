"""The ``checkpoints/step_N`` folders of a training run: one rule for every trainer.

The LM recipe (:mod:`spiritlm.train.checkpoint`, sharded DCP saves) and the vocoder recipe
(:mod:`spiritlm.vocoder.train`, safetensors) write different files into a checkpoint, but find,
trust, prune and set aside their checkpoints with the functions here, so the rules are the same:

* a checkpoint is ``RUN/checkpoints/step_N/`` and is **complete** once its ``COMPLETE`` marker
  (the step, written atomically, last) is there; only complete ones are resumed from or pruned;
* ``keep`` is the number of most recent complete checkpoints kept, ``0`` keeping all; the one
  just written is never removed, and an older one is removed only after a newer one is complete;
* a resume takes the newest complete checkpoint that reads; one that does not (truncated,
  corrupt) is renamed ``step_N.bad`` (kept for inspection) with a one-line warning naming the
  file, and the previous one is tried (:func:`find_resume_point`);
* a checkpoint written into a temporary folder and then renamed (:func:`publish_dir`) replaces an
  existing folder of the same name only once it is whole.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from spiritlm.atomic import atomic_file, publish_dir  # noqa: F401  (publish_dir: part of this module's rules)

COMPLETE_NAME = "COMPLETE"
CHECKPOINTS_DIR = "checkpoints"

T = TypeVar("T")

__all__ = [
    "COMPLETE_NAME",
    "CHECKPOINTS_DIR",
    "CheckpointError",
    "checkpoint_step",
    "complete_checkpoints",
    "find_resume_point",
    "mark_complete",
    "prune_checkpoints",
    "publish_dir",
    "read_checked",
    "set_aside",
    "warn_and_set_aside",
]


class CheckpointError(Exception):
    """A checkpoint file that cannot be read; the message starts with the file's path."""


class Group(Protocol):
    """What the resume needs of the process group (:class:`spiritlm.distributed.Dist`)."""

    main: bool

    def all_have(self, flag: bool) -> bool: ...

    def barrier(self) -> None: ...


def checkpoint_step(path: str | Path) -> int | None:
    """N of a ``step_N`` directory name (None for other names, e.g. a set-aside ``step_N.bad``)."""
    name = Path(path).name
    if not name.startswith("step_") or not name.removeprefix("step_").isdigit():
        return None
    return int(name.removeprefix("step_"))


def complete_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """``(N, checkpoints/step_N)`` of ``run_dir`` marked ``COMPLETE``, oldest first."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    found = []
    for d in root.glob("step_*") if root.is_dir() else ():
        step = checkpoint_step(d)
        if step is not None and (d / COMPLETE_NAME).is_file():
            found.append((step, d))
    return sorted(found)


def mark_complete(ckpt: Path, step: int) -> None:
    """Writes ``ckpt/COMPLETE`` (atomically): call it once every other file of ``ckpt`` is written."""
    with atomic_file(Path(ckpt) / COMPLETE_NAME) as f:
        f.write(f"{step}\n")


def prune_checkpoints(run_dir: str | Path, newest: int, keep: int) -> list[Path]:
    """Removes complete checkpoints older than the ``keep`` most recent up to step ``newest``.

    ``newest`` (the checkpoint just written) is always kept, whatever the other step numbers
    (a set-aside or stale ``step_N`` with a larger N is not counted); ``keep=0`` keeps all.
    Incomplete folders are never touched (an interrupted save of another run is not ours to drop).
    """
    if keep <= 0:
        return []
    done = [(s, p) for s, p in complete_checkpoints(run_dir) if s <= newest]
    removed = [p for s, p in done[:-keep] if s != newest]
    for p in removed:
        shutil.rmtree(p, ignore_errors=True)
    return removed


def set_aside(ckpt: Path) -> Path:
    """Renames an unreadable ``step_N`` to ``step_N.bad`` (kept for inspection, never resumed from)."""
    target = ckpt.with_name(ckpt.name + ".bad")
    n = 1
    while target.exists():
        n += 1
        target = ckpt.with_name(f"{ckpt.name}.bad{n}")
    ckpt.rename(target)  # atomic: setting a bad checkpoint aside, not publishing an output
    return target


def read_checked(path: Path, reader: Callable[[Path], T]) -> T:
    """``reader(path)``, with a missing or unreadable file raised as :class:`CheckpointError`
    naming ``path`` (truncated files raise whatever their library raises: ``SafetensorError``,
    ``PytorchStreamReader failed ...``, ``JSONDecodeError``, ``EOFError``)."""
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    try:
        return reader(path)
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - each library raises its own type for bad bytes
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise CheckpointError(f"{path}: unreadable ({reason})") from exc


def warn_and_set_aside(ckpt: Path, error: Exception | None, d: Group, prog: str) -> None:
    """Prints one warning line naming the bad file (when this rank has the error) and, on the main
    process, renames ``ckpt`` to ``step_N.bad`` (a collective: every rank calls it)."""
    if error is not None:  # one line whatever the rank; the library's traceback is not news
        print(f"[{prog}] warning: {error}; set aside as {ckpt.name}.bad, resuming from the previous complete checkpoint",
              file=sys.stderr, flush=True)
    d.barrier()
    if d.main:
        set_aside(ckpt)
    d.barrier()


def find_resume_point(run_dir: str | Path, inspect: Callable[[Path], T], d: Group, prog: str) -> T | None:
    """``inspect(ckpt)`` of the newest complete checkpoint that every rank can read, or None.

    ``inspect`` reads (and checks) a checkpoint and raises :class:`CheckpointError` naming the bad
    file; such a checkpoint is set aside (:func:`warn_and_set_aside`) and the previous one tried.
    When none is left but some were set aside, a warning says that the run starts from step 0.
    """
    for _, ckpt in reversed(complete_checkpoints(run_dir)):
        try:
            info: Any = inspect(ckpt)
            error = None
        except CheckpointError as exc:
            info, error = None, exc
        if d.all_have(error is None):
            return info
        warn_and_set_aside(ckpt, error, d, prog)
    if any((Path(run_dir) / CHECKPOINTS_DIR).glob("step_*.bad*")):
        print(f"[{prog}] warning: no readable checkpoint left; starting from step 0", file=sys.stderr, flush=True)
    return None
