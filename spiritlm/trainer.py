"""The trainer skeleton every training recipe runs on: phases, the step loop, the log window, the run folder rule.

A recipe (torchtune's shape, :class:`~spiritlm.train.recipe.TrainRecipe` first) is a subclass of
:class:`Recipe` whose methods are the phases a reader expects::

    recipe.setup()            # run folder, data, model, optimiser; a resume restores the step
    recipe.train()            # this module's loop: train_step -> log_train -> validate -> save_checkpoint
    recipe.finish()           # the final outputs (a vocoder folder, a Hugging Face export)
    recipe.cleanup()          # metrics.json, closing files and process groups

The loop's rules are the same for every recipe (so they are written once, here):

* a training record is written for full log windows and at ``max_steps`` only: a run stopped
  early (``stop_after``, a kill) leaves its partial window in the checkpoint
  (:class:`LogWindow`'s state), so a resumed run logs what the uninterrupted one logs whatever
  ``save_every`` and ``log_every`` are (issue 18 item 10);
* validation every ``val_every`` steps and at ``max_steps``; a checkpoint every ``save_every``
  steps and at the last step of this invocation;
* a tqdm bar on the main process; log lines are ``logging`` records of the recipe's module
  (:mod:`spiritlm.logs` shows them, through the bar while it is drawn).

The run folder rule (:class:`RunRule`) is that of every trainer: a folder holding a finished
run is refused unless ``overwrite``; an unfinished run of the same settings resumes by itself;
an unfinished run of other settings is refused naming the first differing flag (a setting a
resume may change is listed in ``resumable``); ``overwrite`` starts over. The checkpoints
themselves follow :mod:`spiritlm.checkpointing`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spiritlm.checkpointing import CHECKPOINTS_DIR
from spiritlm.cli import packaged_recipes
from spiritlm.errors import UserError
from spiritlm.numerics import threads

__all__ = ["LogWindow", "Recipe", "RunRule", "Schedule", "config_from_dict", "packaged_recipes", "read_recipe", "resolve_recipe",
           "seed_everything"]


def seed_everything(seed: int) -> None:
    """Seeds Python's, NumPy's and torch's global generators."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class LogWindow:
    """The values of each metric since the last training record (one float per step).

    A record is the mean of each metric's values; the window is part of a checkpoint's trainer
    state, so a resumed run continues it.

    >>> w = LogWindow()
    >>> w.add({"loss": 1.0}); w.add({"loss": 2.0, "d": 4.0})
    >>> w.means()
    {'loss': 1.5, 'd': 4.0}
    >>> v = LogWindow.from_state(w.state()); v.add({"loss": 3.0}); v.means()["loss"]
    2.0
    """

    def __init__(self, values: dict[str, list[float]] | None = None) -> None:
        self.values: dict[str, list[float]] = values or {}

    def add(self, record: Mapping[str, Any]) -> None:
        """Appends one step's values (floats or 0-d tensors, read with ``float``)."""
        for k, v in record.items():
            self.values.setdefault(k, []).append(float(v))

    def means(self) -> dict[str, float]:
        """Each metric's mean over the window (NumPy's ``mean``: pairwise summation)."""
        return {k: float(np.mean(v)) for k, v in self.values.items()}

    def clear(self) -> None:
        self.values = {}

    def state(self) -> dict[str, list[float]]:
        """JSON-able copy (a checkpoint's trainer state)."""
        return {k: list(v) for k, v in self.values.items()}

    @classmethod
    def from_state(cls, state: Any) -> "LogWindow":
        """The window a checkpoint saved (an empty one for checkpoints of versions without it)."""
        if not isinstance(state, dict):
            return cls()
        return cls({str(k): [float(x) for x in v] for k, v in state.items()})


@dataclass
class Schedule:
    """When the loop logs, validates and saves.

    Attributes:
        max_steps: the run's last step (the schedule's horizon).
        end: the last step of this invocation (``max_steps``, or earlier with ``stop_after``).
        log_every: steps between training records.
        val_every: steps between validations (0: only at ``max_steps``).
        save_every: steps between checkpoints (0: only at ``end``).
        validate_first: validate once at step 0 of a fresh run (the starting point).
        save_at_end: save at ``end`` too (a recipe that resumes); False: only every ``save_every``.
    """

    max_steps: int
    end: int
    log_every: int
    val_every: int = 0
    save_every: int = 0
    validate_first: bool = False
    save_at_end: bool = True

    def log_due(self, step: int) -> bool:
        """Full windows, and the run's last step (not a stop_after: its window is checkpointed)."""
        return step % self.log_every == 0 or step == self.max_steps

    def val_due(self, step: int) -> bool:
        return bool(self.val_every and step % self.val_every == 0) or step == self.max_steps

    def save_due(self, step: int) -> bool:
        return bool(self.save_every and step % self.save_every == 0) or (self.save_at_end and step == self.end)


class Recipe:
    """A training run's phases and the loop that runs them (see the module docstring).

    A subclass sets, in :meth:`setup`: ``self.step`` (0, or the resumed step), ``self.resumed``,
    ``self.schedule`` (:class:`Schedule`) and ``self.main`` (this process writes the log lines
    and the bar), and implements :meth:`train_step`, :meth:`log_train`, :meth:`validate` and
    :meth:`save_checkpoint`. ``name`` prefixes the log lines and labels the bar. ``cpu_threads``
    (set before :meth:`run`) pins the CPU thread pools (torch, BLAS, OpenMP) while the recipe runs
    (:func:`spiritlm.numerics.threads`; None or 0: left as they are).
    """

    name = "train"
    progress = True
    step = 0
    resumed = False
    main = True
    cpu_threads: int | None = None
    schedule: Schedule
    bar: Any = None

    # -- the phases a subclass writes ---------------------------------------------------------

    def setup(self) -> None:
        raise NotImplementedError

    def train_step(self) -> None:
        """One optimiser step (the loop advances ``self.step`` after it)."""
        raise NotImplementedError

    def log_train(self) -> None:
        """Writes the training record of the current window and starts a new window."""
        raise NotImplementedError

    def validate(self) -> None:
        """Evaluates at ``self.step`` and records it (step 0: the starting point); nothing for a
        recipe without validation data."""

    def save_checkpoint(self) -> Any:
        raise NotImplementedError

    def on_train_start(self) -> None:
        """Called once before the first step of this invocation (timers, data iterators)."""

    def finish(self) -> None:
        """The final outputs, after the loop."""

    def cleanup(self) -> None:
        """Closes what :meth:`setup` opened."""

    # -- the loop -------------------------------------------------------------------------------

    def train(self) -> None:
        """Steps until ``schedule.end``, logging, validating and saving by :class:`Schedule`."""
        s = self.schedule
        if s.validate_first and not self.resumed and s.val_every and self.step < s.end:
            self.validate()  # the starting point
        self.bar = None
        if self.progress and self.main and self.step < s.end:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=s.end, initial=self.step, desc=self.name, unit="step", dynamic_ncols=True)
        self.on_train_start()
        while self.step < s.end:
            self.train_step()
            self.step += 1
            if self.bar is not None:
                self.bar.update(1)
            if s.log_due(self.step):
                self.log_train()
            if s.val_due(self.step):
                self.validate()
            if s.save_due(self.step):
                self.save_checkpoint()
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def log(self, line: str) -> None:
        """A progress line, ``[name] line``, logged with the recipe module's logger on the main
        process (:mod:`spiritlm.logs`: the ``spiritlm`` command shows it, through the bar while one
        is drawn; a test reads it with pytest's ``caplog``)."""
        if self.main:
            logging.getLogger(type(self).__module__).info(f"[{self.name}] {line}")

    def run(self) -> None:
        """setup, train, finish, cleanup (with ``cpu_threads`` threads in every pool, restored after)."""
        with threads(self.cpu_threads):
            self.setup()
            self.train()
            self.finish()
            self.cleanup()


# ---------------------------------------------------------------------------------------------
# The run folder: refuse a finished run, resume an unfinished one of the same settings
# ---------------------------------------------------------------------------------------------


def _flatten(d: Mapping[str, Any], keep: tuple[str, ...], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and k not in keep:
            out.update(_flatten(v, keep, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@dataclass(frozen=True)
class RunRule:
    """What a trainer's run folder holds and which of its settings a resume may change.

    Attributes:
        what: the finished output in words (messages: "holds a trained vocoder").
        finished: files whose presence means the run is finished.
        record: the file holding the run's settings (written when the run starts).
        resumable: settings (``record`` keys, dotted when nested) a resumed run may change.
        flags: ``record`` key -> the flag(s) that set it, for keys that are not flags of their own name.
        settings_flags: ``record`` keys that are ``--key`` flags.
        paths: keys compared as absolute paths.
        whole: nested keys compared whole (not key by key).
        entries: what a run writes into the folder (removed when ``overwrite`` starts over).
        upgrade: maps a record of an older version to this version's keys (before comparing).
    """

    what: str
    finished: tuple[str, ...]
    record: str
    resumable: tuple[str, ...] = ()
    flags: Mapping[str, str] = field(default_factory=dict)
    settings_flags: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    whole: tuple[str, ...] = ()
    entries: tuple[str, ...] = ()
    upgrade: Callable[[dict[str, Any]], dict[str, Any]] | None = None

    def is_finished(self, run_dir: Path) -> bool:
        return all((Path(run_dir) / f).is_file() for f in self.finished)

    def check_finished(self, run_dir: Path, overwrite: bool) -> None:
        """Refuses a folder holding a finished run unless ``overwrite`` (cheap: before any data is read)."""
        if self.is_finished(run_dir) and not overwrite:
            raise UserError(f"{run_dir}: holds {self.what} ({', '.join(self.finished)}); pass --overwrite true to train a "
                            "new one in its place, or choose another --out")

    def difference(self, saved: Mapping[str, Any], record: Mapping[str, Any]) -> str | None:
        """The first setting that differs between two runs' records, apart from ``resumable``;
        None when one can resume the other."""
        a, b = (_flatten(json.loads(json.dumps(r)), self.whole) for r in (saved, record))
        for key in sorted(set(a) | set(b)):
            if key in self.resumable:
                continue
            x, y = a.get(key), b.get(key)
            if key in self.paths and x and y:
                x, y = os.path.abspath(x), os.path.abspath(y)
            if x != y:
                return key
        return None

    def check(self, run_dir: Path, record: Mapping[str, Any], overwrite: bool) -> bool:
        """Decides what a run does with ``run_dir``; returns True when it must start over
        (``overwrite`` on an earlier run: :meth:`clear`), False to resume (or start in a new folder).

        Raises:
            UserError: an unfinished run of other settings (naming the first differing flag) or
                an unreadable record, without ``overwrite``.
        """
        saved_file = Path(run_dir) / self.record
        if overwrite:
            return saved_file.is_file() or self.is_finished(run_dir) or (Path(run_dir) / CHECKPOINTS_DIR).is_dir()
        if not saved_file.is_file():
            return False
        try:
            saved = json.loads(saved_file.read_text())
            if not isinstance(saved, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            raise UserError(f"{saved_file}: unreadable ({' '.join(str(exc).split())[:120]}); pass --overwrite true to start over (--out)") from None
        if self.upgrade is not None:
            saved = self.upgrade(saved)
        key = self.difference(saved, record)
        if key is None:
            return False
        flag = self.flags.get(key, f"--{key}" if key in self.settings_flags else f"the recipe's {key}")
        was, now = (json.dumps(_flatten(json.loads(json.dumps(r)), self.whole).get(key))[:60] for r in (saved, record))
        raise UserError(
            f"{saved_file}: an unfinished run with {key} {was}, this command has {now} ({flag}): rerun with the run's "
            "settings to resume it, or pass --overwrite true to start over (its checkpoints are deleted)"
        )

    def clear(self, run_dir: Path) -> None:
        """Removes what an earlier run wrote into ``run_dir`` (``entries``; other files stay)."""
        for name in self.entries:
            p = Path(run_dir) / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()


# ---------------------------------------------------------------------------------------------
# Recipes in recipes/configs/: found by name from any folder
# ---------------------------------------------------------------------------------------------

#: the families of packaged recipes other than the LM's: ``recipes/configs/<family>-*.yaml``
FAMILIES = ("vocoder", "tokenizer", "judges")


def _family(name: str) -> str | None:
    return next((f for f in FAMILIES if name.startswith(f"{f}-")), None)


def resolve_recipe(where: str, family: str | None = None, flag: str = "--config") -> str:
    """``--config``'s file: a path as given, else a packaged recipe by name from any folder.

    ``tiny-text``, ``tiny-text.yaml`` and ``recipes/configs/tiny-text.yaml`` (typed outside the
    repository) all name the packaged ``recipes/configs/tiny-text.yaml``. ``family``: the
    trainer's recipes (``vocoder``: ``vocoder-*.yaml``; None: the LM's, those of no family);
    another family's name is not taken, and the message lists this family's names (and ``flag``).

    Raises:
        UserError: neither a file nor a packaged recipe of the family (names them).
    """
    if Path(where).is_file():
        return where
    folder = packaged_recipes()
    name = Path(where).name
    if folder is not None and _family(Path(name).stem) == family:
        for candidate in (folder / name, folder / f"{name}.yaml"):
            if candidate.is_file():
                return str(candidate)
    names = ", ".join(sorted(p.stem for p in folder.glob("*.yaml") if _family(p.stem) == family)) if folder is not None else "none found"
    raise UserError(f"{where}: no such recipe file ({flag}), nor the name of a packaged recipe ({names})")


def read_recipe(where: str, family: str | None = None, flag: str = "--config") -> tuple[Path, dict[str, Any]]:
    """``(file, values)`` of a recipe YAML (:func:`resolve_recipe`); torch is not imported.

    Raises:
        UserError: no such recipe, or a file that is not a YAML mapping (naming it).
    """
    import yaml

    path = Path(resolve_recipe(where, family, flag))
    try:
        values = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"{path}: not a readable recipe ({' '.join(str(exc).split())[:160]}) ({flag})") from None
    if not isinstance(values, dict):
        raise UserError(f"{path}: a recipe is a YAML mapping of settings, got {type(values).__name__} ({flag})")
    return path, values


def config_from_dict(base: Any, values: Mapping[str, Any], where: str, prefix: str = "") -> Any:
    """``base`` (a dataclass instance: the defaults) with a recipe's ``values`` over it.

    A mapping given for a dataclass field updates that field's own value key by key (the fields it
    does not name keep ``base``'s), lists become tuples where ``base`` holds a tuple.

    >>> @dataclass
    ... class Inner:
    ...     a: int = 1
    ...     b: int = 2
    >>> @dataclass
    ... class Outer:
    ...     inner: Inner = field(default_factory=lambda: Inner(b=5))
    ...     pair: tuple[float, float] = (0.0, 1.0)
    >>> config_from_dict(Outer(), {"inner": {"a": 3}, "pair": [2, 3]}, "r.yaml")
    Outer(inner=Inner(a=3, b=5), pair=(2, 3))

    Raises:
        UserError: a key that is not a field (naming ``where`` and the dotted key).
    """
    cls = type(base)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(prefix + k for k in unknown)} (keys{' of ' + prefix[:-1] if prefix else ''}: "
                        f"{', '.join(names)})")
    changes: dict[str, Any] = {}
    for key, value in values.items():
        current = getattr(base, key)
        if dataclasses.is_dataclass(current) and isinstance(value, Mapping):
            value = config_from_dict(current, value, where, f"{prefix}{key}.")
        elif isinstance(value, list) and isinstance(current, tuple):  # YAML has lists only
            value = tuple(value)
        changes[key] = value
    return dataclasses.replace(base, **changes)
