"""Typed configuration of a training run, read from YAML with dotted overrides.

A recipe file has four sections, each a dataclass below::

    model: {preset: tiny, vocab_size: tokenizer, init_from: null, overrides: {}}
    data:  {data_dir: work/data, seq_len: 256, batch_size: 16, subset_weights: {...}}
    optim: {lr: 3.0e-4, schedule: cosine, warmup_steps: 50, grad_clip: 1.0, grad_accum: 1}
    train: {output_dir: runs/tiny, max_steps: 300, val_every: 50, save_every: 100}

Overrides are ``"dotted.key=value"`` strings whose value is parsed as YAML
(``optim.lr=1e-4``, ``data.subset_weights={text: 1.0}``, ``model.init_from=null``).
Relative paths in the file are resolved against the current directory, not the file's.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union, get_origin, get_type_hints

import yaml

SUBSETS = ("speech", "text", "interleaved")


@dataclass
class ModelSection:
    """The model to train.

    Attributes:
        preset: architecture preset of :func:`spiritlm.model.model_config` (``tiny``,
            ``llama2-7b``, ``llama2-7b-base``, ``llama2-7b-expressive``); ignored when
            ``init_from`` is given (the checkpoint's architecture is used).
        overrides: ``LLaMAConfig`` fields replacing the preset's (e.g. ``{num_layers: 2}``).
        vocab_size: rows of the embedding/output tables: ``"tokenizer"`` (the text tokenizer's
            padded size, speech pieces included), ``"text"`` (the text pieces and the two
            modality markers, which begin every document, but no unit token: the text-only LM
            standing in for LLaMA-2), or an integer.
        init_from: start from these weights (a Hugging Face LLaMA directory, a training run
            directory or a checkpoint directory); when its vocabulary is smaller than
            ``vocab_size`` the new rows are the mean of the old rows plus noise.
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
    """The token data (built by ``spiritlm data build``).

    Attributes:
        data_dir: token directory of the training split (``spiritlm data build --out``).
        val_dir: token directory of the validation split, built with the training split's
            tokenizer (``None``: no validation).
        tokenizer: the text tokenizer's sentencepiece model (default: the one in
            ``data_dir``).
        seq_len: tokens per training sequence.
        batch_size: sequences per micro-batch on each rank.
        subset_weights: sampling weights of the ``speech``, ``text`` and ``interleaved``
            subsets (paper: 1/3 each; ``{text: 1.0}`` trains on text only).
        val_batches: micro-batches per subset in each validation.
        val_subsets: subsets whose validation loss is reported (a text-only model cannot
            score speech tokens: use ``[text]`` with ``model.vocab_size: text``).
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
        schedule: ``constant`` (after warmup) or ``cosine`` (decays to ``min_lr_ratio * lr``
            at ``train.max_steps``).
        warmup_steps: linear warmup from 0.
        min_lr_ratio: final learning rate of the cosine schedule, relative to ``lr``.
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
        log_every: steps between training-loss log records.
        val_every: steps between validations (0: only at the end).
        save_every: steps between checkpoints (0: only at the end).
        keep_checkpoints: most recent checkpoints kept (0: all).
        seed: seed of torch/python/numpy RNGs.
        dtype: ``auto`` (bfloat16 autocast on GPU, float32 on CPU), ``float32`` or
            ``bfloat16``.
        parallel: under ``torchrun`` with several processes: ``ddp`` or ``fsdp``
            (parameters, gradients and optimiser state sharded with torch FSDP2).
        activation_checkpointing: recompute each decoder layer's activations in the backward
            pass (fairseq2's layer-wise checkpointing): needed for 7B at 4k context.
        resume: continue from the latest complete checkpoint of ``output_dir`` if any.
        stop_after: stop (after saving a checkpoint) once this step is reached, as if the
            job were interrupted; the next run with ``resume`` continues to ``max_steps``.
        export_hf: write ``output_dir/hf`` (Hugging Face LLaMA + ``tokenizer.model``) at the end.
        tensorboard: write TensorBoard event files to ``output_dir/tb``.
        progress: show a tqdm progress bar (rank 0).
        num_threads: torch CPU threads (0: torch's default).
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
    export_hf: bool = True
    tensorboard: bool = True
    progress: bool = True
    num_threads: int = 0


@dataclass
class TrainConfig:
    """A whole recipe: ``model``, ``data``, ``optim``, ``train`` sections."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["optim"]["betas"] = list(d["optim"]["betas"])
        return d


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)} (known: {sorted(names)})")
    kwargs = {}
    for key, value in data.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            value = _build(hint, value or {}, f"{where}.{key}")
        elif get_origin(hint) is tuple and isinstance(value, list):
            value = tuple(value)
        elif hint is float and isinstance(value, (int, str)) and not isinstance(value, bool):
            try:
                value = float(value)
            except ValueError:
                raise ValueError(f"{where}.{key}: expected a number, got {value!r}") from None
        kwargs[key] = value
    return cls(**kwargs)


def apply_overrides(data: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Applies ``"a.b=value"`` overrides (values parsed as YAML) to a nested dict, in place."""
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw.strip() else None
        if isinstance(value, str):  # YAML 1.1 reads "2e-3" as a string
            try:
                value = float(value)
            except ValueError:
                pass
        node = data
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {p} is not a section")
        node[parts[-1]] = value
    return data


def load_train_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """Reads a recipe YAML (or starts from the defaults when ``path`` is None) and applies overrides.

    Raises:
        ValueError: naming the file and key on unknown keys or malformed YAML.
    """
    data: dict[str, Any] = {}
    where = "config"
    if path is not None:
        path = Path(path)
        where = str(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except OSError as e:
            raise FileNotFoundError(f"{path}: cannot read the recipe ({e})") from e
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: malformed YAML ({e})") from e
    apply_overrides(data, overrides)
    config = _build(TrainConfig, data, where)
    validate(config, where)
    return config


def validate(config: TrainConfig, where: str = "config") -> None:
    """Checks values that the dataclasses cannot type-check."""
    o, t, d, m = config.optim, config.train, config.data, config.model
    if o.schedule not in ("constant", "cosine"):
        raise ValueError(f"{where}: optim.schedule must be constant or cosine, got {o.schedule!r}")
    if o.grad_accum < 1:
        raise ValueError(f"{where}: optim.grad_accum must be >= 1")
    if t.dtype not in ("auto", "float32", "bfloat16"):
        raise ValueError(f"{where}: train.dtype must be auto, float32 or bfloat16, got {t.dtype!r}")
    if t.parallel not in ("ddp", "fsdp"):
        raise ValueError(f"{where}: train.parallel must be ddp or fsdp, got {t.parallel!r}")
    if t.max_steps < 1:
        raise ValueError(f"{where}: train.max_steps must be >= 1")
    bad = (set(d.subset_weights) | set(d.val_subsets)) - set(SUBSETS)
    if bad:
        raise ValueError(f"{where}: data.subset_weights /val_subsets have unknown subsets {sorted(bad)} (use {SUBSETS})")
    if not (isinstance(m.vocab_size, int) or m.vocab_size in ("tokenizer", "text")):
        raise ValueError(f"{where}: model.vocab_size must be an integer, 'tokenizer' or 'text'")
