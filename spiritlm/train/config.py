"""The training recipe's typed configuration and its one parser.

A recipe file has four sections, each a dataclass below::

    model: {preset: tiny, vocab_size: tokenizer, init_from: null, overrides: {}}
    data:  {data_dir: work/data, seq_len: 256, batch_size: 16, subset_weights: {...}}
    optim: {lr: 3.0e-4, schedule: cosine, warmup_steps: 50, grad_clip: 1.0, grad_accum: 1}
    train: {output_dir: runs/tiny, max_steps: 300, val_every: 50, save_every: 100}

Every way of starting a run reads it through :func:`parse_recipe` (a jsonargparse parser built
from these dataclasses): ``spiritlm train --config F --optim.lr 1e-4`` (the CLI, torchrun and
the Slurm script all run that command) and :func:`load_train_config` (the Python API, whose
``"optim.lr=1e-4"`` overrides become ``--optim.lr=1e-4``). Values are typed by the field they
set: ``data.data_dir=1e5`` stays the string ``"1e5"``; ``optim.lr=abc`` is an error.
Relative paths in the file are resolved against the current directory, not the file's.

:func:`validate` checks what the types cannot (ranges, warmup versus max_steps) and
:func:`check_inputs` the files a run needs; both are cheap and run before torch is imported.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from spiritlm.constants import SUBSETS
from spiritlm.errors import UserError


class RecipeError(UserError, ValueError):
    """A recipe value or file that cannot work; the message names the flag (``--optim.lr``)."""


@dataclass
class ModelSection:
    """The model to train.

    Attributes:
        preset: architecture preset (tiny,
            llama2-7b, llama2-7b-base, llama2-7b-expressive); ignored when
            init_from is given (the checkpoint's architecture is used).
        overrides: LLaMAConfig fields replacing the preset's (e.g. {num_layers: 2}).
        vocab_size: rows of the embedding/output tables: "tokenizer" (the text tokenizer's
            padded size, speech pieces included), "text" (the text pieces and the two
            modality markers, which begin every document, but no unit token: the text-only LM
            standing in for LLaMA-2), or an integer.
        init_from: start from these weights (a Hugging Face LLaMA directory, a training run
            directory or a checkpoint directory); when its vocabulary is smaller than
            vocab_size the new rows are the mean of the old rows plus noise.
        new_rows_noise_std: noise of the new rows, relative to the per-dimension standard
            deviation of the old rows.
        seed: seed of the random initialisation and of the new rows.
    """

    preset: str = "tiny"
    overrides: dict[str, Any] = field(default_factory=dict)
    vocab_size: Union[int, str] = "tokenizer"
    init_from: str | None = None
    new_rows_noise_std: float = 0.1
    seed: int = 0


@dataclass
class DataSection:
    """The token data (built by spiritlm data build).

    Attributes:
        data_dir: token directory of the training split (spiritlm data build --out).
        val_dir: token directory of the validation split, built with the training split's
            tokenizer (None: no validation).
        tokenizer: the text tokenizer's sentencepiece model (default: the one in
            data_dir).
        seq_len: tokens per training sequence.
        batch_size: sequences per micro-batch on each rank.
        subset_weights: sampling weights of the speech, text and interleaved
            subsets (paper: 1/3 each; {text: 1.0} trains on text only).
        val_batches: micro-batches per subset in each validation.
        val_subsets: subsets whose validation loss is reported (a text-only model cannot
            score speech tokens: use [text] with model.vocab_size: text).
        seed: seed of the data order.
    """

    data_dir: str = "work/data"
    val_dir: str | None = None
    tokenizer: str | None = None
    seq_len: int = 256
    batch_size: int = 8
    subset_weights: dict[str, float] = field(default_factory=lambda: {s: 1 / 3 for s in SUBSETS})
    val_batches: int = 4
    val_subsets: list[str] = field(default_factory=lambda: list(SUBSETS))
    seed: int = 0


@dataclass
class OptimSection:
    """AdamW and the learning-rate schedule.

    Attributes:
        lr: peak learning rate (paper, 7B: 3e-5 constant).
        betas: AdamW betas.
        eps: AdamW epsilon.
        weight_decay: decoupled weight decay of the matrices (norms are not decayed).
        schedule: constant (after warmup) or cosine (decays to min_lr_ratio * lr
            at train.max_steps).
        warmup_steps: linear warmup from 0.
        min_lr_ratio: final learning rate of the cosine schedule, relative to lr.
        grad_clip: clip the global gradient norm to this (0: off).
        grad_accum: micro-batches accumulated per optimiser step.
    """

    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1
    schedule: str = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    grad_accum: int = 1


@dataclass
class TrainSection:
    """The run.

    Attributes:
        output_dir: run directory (checkpoints, logs, metrics, the Hugging Face export).
        max_steps: optimiser steps of the whole run.
        log_every: steps between training-loss log records (each the mean over its window;
            the partial window travels with the checkpoints, so a resumed run logs the
            uninterrupted run's values; a stop_after does not log a partial window).
        val_every: steps between validations (0: only at the end).
        save_every: steps between checkpoints (0: only at the end).
        keep_checkpoints: most recent complete checkpoints kept (0: all); the one just
            written is never removed.
        seed: seed of torch/python/numpy RNGs.
        dtype: auto (bfloat16 autocast on GPU, float32 on CPU), float32 or
            bfloat16.
        parallel: under torchrun with several processes: ddp or fsdp
            (parameters, gradients and optimiser state sharded with torch FSDP2).
        activation_checkpointing: recompute each decoder layer's activations in the backward
            pass (fairseq2's layer-wise checkpointing): needed for 7B at 4k context.
        resume: continue from the newest readable complete checkpoint of output_dir if any
            (an unreadable one is set aside as step_N.bad with a warning). Every setting
            must equal the run's config.yaml except how the run goes on (train.max_steps,
            log/val/save intervals, keep_checkpoints, stop_after, async_save, export_hf,
            tensorboard, progress, num_threads, dtype, parallel, activation_checkpointing and
            the validation data: RESUME_MAY_CHANGE): the checkpoint overrides the model,
            optimiser, RNG and data position, and the steps taken used the schedule, so a
            change is refused naming the flag (start a new train.output_dir instead).
        stop_after: stop (after saving a checkpoint) once this step is reached, as if the
            job were interrupted; the next run with resume continues to max_steps.
        async_save: write checkpoints in a background thread (a CPU copy of each rank's
            shards is taken first) while training goes on; the checkpoint is marked COMPLETE
            when the next save starts or the run ends.
        export_hf: write output_dir/hf (Hugging Face LLaMA + tokenizer.model) at the end.
        tensorboard: write TensorBoard event files to output_dir/tb.
        progress: show a tqdm progress bar (rank 0).
        num_threads: CPU threads of torch, BLAS and OpenMP (0: leave them as they are).
    """

    output_dir: str = "runs/tiny"
    max_steps: int = 100
    log_every: int = 10
    val_every: int = 0
    save_every: int = 0
    keep_checkpoints: int = 2
    seed: int = 0
    dtype: str = "auto"
    parallel: str = "ddp"
    activation_checkpointing: bool = False
    resume: bool = True
    stop_after: int | None = None
    async_save: bool = False
    export_hf: bool = True
    tensorboard: bool = True
    progress: bool = True
    num_threads: int = 0


@dataclass
class TrainConfig:
    """A whole recipe: model, data, optim, train sections."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["optim"]["betas"] = list(d["optim"]["betas"])
        return d

    def to_yaml(self) -> str:
        """The recipe as YAML: spiritlm train --config of this text reproduces the config."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


SECTIONS: dict[str, type] = {"model": ModelSection, "data": DataSection, "optim": OptimSection, "train": TrainSection}

# Optimiser settings stored in the optimiser state of a checkpoint: on resume the saved values
# win, so a run may not change them (see TrainSection.resume).
RESUME_FIXED = ("lr", "betas", "eps", "weight_decay")
# What a resumed run may change: how it runs, logs, validates, saves and how far it goes, not what
# its steps compute. Every other key is fixed once a checkpoint exists: the checkpoint overrides it
# (the architecture, the optimiser and RNG state, the data position) or the steps already taken used
# it (the schedule: warmup_steps, schedule, min_lr_ratio; grad_clip, grad_accum, the data mix and
# order, seeds), so a new value would leave config.yaml describing a run that never happened.
RESUME_MAY_CHANGE = frozenset({
    "train.output_dir", "train.max_steps", "train.log_every", "train.val_every", "train.save_every", "train.keep_checkpoints",
    "train.stop_after", "train.async_save", "train.export_hf", "train.tensorboard", "train.progress", "train.num_threads",
    "train.resume", "train.dtype", "train.parallel", "train.activation_checkpointing",
    "data.val_dir", "data.val_batches", "data.val_subsets",
})


def recipe_parser(prog: str = "spiritlm train"):
    """The jsonargparse parser of a recipe: ``--config FILE`` then ``--section.key value`` options."""
    import jsonargparse

    parser = jsonargparse.ArgumentParser(
        prog=prog,
        exit_on_error=False,
        description=(
            "Train the LM from a recipe: --config recipes/configs/NAME.yaml, then --section.key value "
            "overrides (later ones win). Rerunning the same command resumes from the newest complete "
            "checkpoint of --train.output_dir."
        ),
    )
    parser.add_argument("--config", action=jsonargparse.ActionConfigFile, help="a recipe YAML (recipes/configs/*.yaml)")
    for name, cls in SECTIONS.items():
        parser.add_class_arguments(cls, name)
    return parser


def _joined_negatives(argv: Sequence[str]) -> list[str]:
    """``--optim.lr -1e-3`` -> ``--optim.lr=-1e-3`` (argparse takes ``-1e-3`` for an option)."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1].startswith("--") and "=" not in out[-1] and arg.startswith("-") and _is_number(arg):
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def resolve_recipe(where: str) -> str:
    """``--config``'s file: a path as given, else a packaged LM recipe by name from any folder
    (:func:`spiritlm.trainer.resolve_recipe`; ``vocoder-*`` and ``tokenizer-*`` are other trainers').

    Raises:
        RecipeError: neither a file nor a packaged recipe (names them).
    """
    from spiritlm.trainer import resolve_recipe as resolve

    try:
        return resolve(where)
    except UserError as exc:
        raise RecipeError(str(exc)) from None


def parse_recipe(argv: Sequence[str], prog: str = "spiritlm train") -> TrainConfig:
    """Parses ``--config FILE --section.key value …`` into a validated :class:`TrainConfig`.

    Raises:
        RecipeError: one line naming the file or flag (unknown key, wrong type, bad value).
    """
    import jsonargparse

    parser = recipe_parser(prog)
    argv = _joined_negatives(argv)
    where = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if where is None and "--config" in argv[:-1]:
        where = argv[argv.index("--config") + 1]
    if where is not None:
        found = resolve_recipe(where)
        argv = [f"--config={found}" if a == f"--config={where}" else a for a in argv]
        if "--config" in argv[:-1]:
            argv[argv.index("--config") + 1] = found
    try:
        ns = parser.parse_args(argv)
        sections = parser.instantiate(ns)
    except (jsonargparse.ArgumentError, ValueError, TypeError) as exc:
        message = " ".join(str(exc).split())
        raise RecipeError(f"{where + ': ' if where else ''}{message}") from None
    config = TrainConfig(**{name: sections[name] for name in SECTIONS})
    if isinstance(config.optim.betas, list):
        config.optim.betas = tuple(config.optim.betas)  # type: ignore[assignment]
    validate(config, where or "spiritlm train")
    return config


def load_train_config(path: str | Path | None, overrides: Sequence[str] | None = None) -> TrainConfig:
    """Reads a recipe (the defaults when ``path`` is None) with ``"section.key=value"`` overrides.

    The same parser as ``spiritlm train``: ``load_train_config(F, ["optim.lr=1e-4"])`` equals
    ``spiritlm train --config F --optim.lr 1e-4``.
    """
    argv = [] if path is None else ["--config", str(path)]
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise RecipeError(f"override {item!r} is not of the form section.key=value")
        argv.append(f"--{key.strip()}={value}")
    return parse_recipe(argv)


def validate(config: TrainConfig, where: str = "spiritlm train") -> None:
    """Checks values that the types cannot; raises :class:`RecipeError` naming the flag."""
    o, t, d, m = config.optim, config.train, config.data, config.model

    def bad(message: str) -> RecipeError:
        return RecipeError(f"{where}: {message}")

    if o.schedule not in ("constant", "cosine"):
        raise bad(f"--optim.schedule must be constant or cosine, got {o.schedule!r}")
    if not o.lr > 0:
        raise bad(f"--optim.lr must be positive, got {o.lr}")
    if not 0 <= o.min_lr_ratio <= 1:
        raise bad(f"--optim.min_lr_ratio must be in [0, 1], got {o.min_lr_ratio}")
    if o.weight_decay < 0 or o.eps <= 0 or o.grad_clip < 0:
        raise bad("--optim.weight_decay and --optim.grad_clip must be >= 0 and --optim.eps > 0")
    if not all(0 <= b < 1 for b in o.betas) or len(o.betas) != 2:
        raise bad(f"--optim.betas must be two numbers in [0, 1), got {list(o.betas)}")
    if o.grad_accum < 1:
        raise bad(f"--optim.grad_accum must be >= 1, got {o.grad_accum}")
    if t.max_steps < 1:
        raise bad(f"--train.max_steps must be >= 1, got {t.max_steps}")
    if o.warmup_steps < 0 or o.warmup_steps > t.max_steps:
        raise bad(f"--optim.warmup_steps {o.warmup_steps} must be in [0, --train.max_steps {t.max_steps}]")
    for key in ("log_every", "val_every", "save_every", "keep_checkpoints", "num_threads"):
        if getattr(t, key) < 0:
            raise bad(f"--train.{key} must be >= 0, got {getattr(t, key)}")
    if t.log_every < 1:
        raise bad(f"--train.log_every must be >= 1, got {t.log_every}")
    if t.stop_after is not None and t.stop_after < 1:
        raise bad(f"--train.stop_after must be >= 1, got {t.stop_after}")
    if t.dtype not in ("auto", "float32", "bfloat16"):
        raise bad(f"--train.dtype must be auto, float32 or bfloat16, got {t.dtype!r}")
    if t.parallel not in ("ddp", "fsdp"):
        raise bad(f"--train.parallel must be ddp or fsdp, got {t.parallel!r}")
    if d.seq_len < 2 or d.batch_size < 1 or d.val_batches < 0:
        raise bad("--data.seq_len must be >= 2, --data.batch_size >= 1 and --data.val_batches >= 0")
    unknown = (set(d.subset_weights) | set(d.val_subsets)) - set(SUBSETS)
    if unknown:
        raise bad(f"--data.subset_weights / --data.val_subsets name unknown subsets {sorted(unknown)} (use {list(SUBSETS)})")
    if any(w < 0 for w in d.subset_weights.values()) or not any(w > 0 for w in d.subset_weights.values()):
        raise bad(f"--data.subset_weights must be >= 0 with one > 0, got {d.subset_weights}")
    if not (isinstance(m.vocab_size, int) or m.vocab_size in ("tokenizer", "text")):
        raise bad(f"--model.vocab_size must be an integer, tokenizer or text, got {m.vocab_size!r}")


def _is_token_dir(path: Path) -> bool:
    return (path / "index.json").is_file()


def check_inputs(config: TrainConfig, *, data: bool = True, tokenizer: bool = True) -> None:
    """Checks the files a run reads and the run directory it resumes, before anything heavy.

    Raises:
        RecipeError: naming the path and the flag: a missing token directory
            (``--data.data_dir``, ``--data.val_dir``), tokenizer (``--data.tokenizer``),
            ``--model.init_from``, an ``--train.output_dir`` that is a file, or a resumed run whose
            optimiser settings differ from its ``config.yaml`` (see ``TrainSection.resume``).
            ``data=False`` / ``tokenizer=False`` skip the checks of inputs a caller provides itself.
    """
    d, m, t = config.data, config.model, config.train
    for flag, value in (("--data.data_dir", d.data_dir), ("--data.val_dir", d.val_dir)):
        if data and value and not _is_token_dir(Path(value)):
            what = "no such directory" if not Path(value).exists() else "no index.json: not a token directory of `spiritlm data build`"
            raise RecipeError(f"{value}: {what} ({flag})")
    tok = Path(d.tokenizer) if d.tokenizer else Path(d.data_dir) / "tokenizer.model"
    if tokenizer and not tok.is_file():
        raise RecipeError(f"{tok}: text tokenizer not found (--data.tokenizer, or build the data with `spiritlm data build`)")
    if m.init_from and not Path(m.init_from).is_dir():
        raise RecipeError(f"{m.init_from}: no such model directory (--model.init_from)")
    out = Path(t.output_dir)
    if out.exists() and not out.is_dir():
        raise RecipeError(f"{out}: exists and is not a directory (--train.output_dir)")
    if t.resume:
        check_resume(config)


def check_resume(config: TrainConfig) -> None:
    """Refuses to resume a run with settings other than it was started with (issue 18 item 9).

    The checkpoint's optimiser state holds ``lr``, ``betas``, ``eps`` and ``weight_decay`` and
    wins over the recipe; the model, the RNG and the data position come from the checkpoint too;
    the schedule (``warmup_steps``, ``schedule``, ``min_lr_ratio``) and the rest already shaped
    the steps taken. Accepting a new value would train with the old one, or a mix, while
    ``config.yaml`` claimed the new one, so only :data:`RESUME_MAY_CHANGE` may differ (``config.yaml``
    is rewritten only when the run resumes).
    """
    run = Path(config.train.output_dir)
    saved_file = run / "config.yaml"
    if not saved_file.is_file() or not any((p / "COMPLETE").is_file() for p in (run / "checkpoints").glob("step_*")):
        return
    try:
        saved = yaml.safe_load(saved_file.read_text()) or {}
        if not isinstance(saved, dict):
            raise yaml.YAMLError("not a mapping")
    except yaml.YAMLError as exc:
        raise RecipeError(f"{saved_file}: unreadable ({' '.join(str(exc).split())}); move it away to resume") from None
    now = config.to_dict()
    for section, fields in now.items():
        old = saved.get(section)
        if not isinstance(old, dict):
            continue
        for key, value in fields.items():
            name = f"{section}.{key}"
            if name in RESUME_MAY_CHANGE or key not in old or not _differs(old[key], value):
                continue
            why = ("would be overridden by the saved optimiser state" if section == "optim" and key in RESUME_FIXED
                   else "would not describe the steps already taken from the checkpoints")
            raise RecipeError(
                f"{saved_file}: this run was started with {name} {_show(old[key])}; resuming with "
                f"--{name} {_show(value)} {why} (keep {_show(old[key])}, or start a new --train.output_dir)"
            )


def _show(v: Any) -> str:
    return json.dumps(v, default=str) if isinstance(v, (dict, list)) else str(v)


def _differs(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) != len(b) or any(_differs(x, y) for x, y in zip(a, b))
    try:
        return float(a) != float(b)
    except (TypeError, ValueError):
        return a != b
