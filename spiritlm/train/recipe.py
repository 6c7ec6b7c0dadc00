"""The LM training recipe: continued pretraining of the fairseq2 LLaMA on the interleaved data.

:class:`TrainRecipe` reads like the run it performs (torchtune style)::

    recipe = TrainRecipe(config)
    recipe.setup()        # run directory, tokenizer, model (fresh or resumed), optimiser, data
    recipe.train()        # the loop: train_step -> log_train -> validate -> save_checkpoint
    recipe.export()       # output_dir/hf, streamed from the final checkpoint, written atomically
    recipe.cleanup()

(:meth:`TrainRecipe.run` does the four.) The loop and its logging rule are the trainer skeleton's
(:class:`spiritlm.trainer.Recipe`, the vocoder's too); the log window here holds loss *sums*
and target counts, reduced over ranks when logged, rather than the skeleton's per-step
:class:`~spiritlm.trainer.LogWindow` (a token-weighted mean over ranks and subsets). Choice: a plain PyTorch loop around the fairseq2 model,
not fairseq2's ``Trainer``: fairseq2 0.8.1's recipes are bound to its asset store, dataset
registry and dependency container and to its own data pipeline; wiring our resumable packed
loader into them costs more than this file and makes exact resumption (loader, RNG and optimiser
state in plain ``weights_only`` files) harder to guarantee and test. The model, its
initialisation, the Hugging Face interop and the KV cache are fairseq2's.

What it does: AdamW (no decay on norms), linear warmup then constant or cosine, gradient
clipping and accumulation, bfloat16 autocast on GPU / float32 on CPU, DDP or FSDP2 under
``torchrun``, per-subset validation loss, TensorBoard + JSONL metrics + a log line per record
(tqdm bar optional), and checkpoints (:mod:`spiritlm.train.checkpoint`) from which a resumed
run reproduces the uninterrupted run's losses exactly on CPU. An unreadable newest checkpoint
is set aside (``step_N.bad``) with a one-line warning and the previous one is used.

Memory at 7B (docs/scaling.md §3): under FSDP the model is built on the meta device and
sharded before any weight exists; a fresh run's rank 0 reads ``init_from`` tensor by tensor
(memory-mapped safetensors), adds the new vocabulary rows once, and every rank receives only its
shards by broadcast (:func:`build_model`); a resumed run loads only its shards. Checkpoints are
sharded (:mod:`spiritlm.train.checkpoint`) and the final Hugging Face export is streamed from
the last one, so no rank ever gathers the model or the optimiser state. Parameters and AdamW
state stay float32 (bfloat16 compute).

Outputs in ``output_dir``: ``config.yaml`` (the resolved recipe), ``metrics.jsonl`` (one
record per log/validation and step; a resume drops the records after its checkpoint),
``metrics.json`` (summary), ``tb/`` (TensorBoard), ``tokenizer.model``, ``checkpoints/``,
``hf/`` (Hugging Face export at the end, with ``spiritlm_export.json`` naming its step).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fairseq2.nn import BatchLayout, RMSNorm

from spiritlm.atomic import atomic_file
from spiritlm.checkpointing import find_resume_point, warn_and_set_aside
from spiritlm.constants import IGNORE_INDEX, SUBSETS
from spiritlm.metrics_log import MetricsLog, read_history  # shared with the vocoder's recipe
from spiritlm.model import (
    LLaMAConfig,
    create_model,
    extend_vocabulary_state,
    load_weights_into,
    model_config,
    read_model_config,
    read_model_weights,
)
from spiritlm.model.config import config_from_dict, config_to_dict
from spiritlm.train.checkpoint import (
    CheckpointError,
    CheckpointInfo,
    Checkpointer,
    inspect_checkpoint,
    load_checkpoint,
    rng_state,
    set_rng_state,
)
from spiritlm.train.config import RecipeError, TrainConfig, check_inputs
from spiritlm.distributed import Dist
from spiritlm.trainer import Recipe, Schedule, seed_everything  # noqa: F401  (seed_everything: this module's API)

IGNORE = IGNORE_INDEX

# ---------------------------------------------------------------------------------------------
# Schedule, optimiser, seeds
# ---------------------------------------------------------------------------------------------


def lr_factor(step: int, *, warmup_steps: int, max_steps: int, schedule: str, min_lr_ratio: float) -> float:
    """Multiplier of the peak learning rate at optimiser step ``step`` (0-based)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    progress = min(max(progress, 0.0), 1.0)
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only (embeddings and projections), not on norms."""
    o = config.optim
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps)


# ---------------------------------------------------------------------------------------------
# Model setup
# ---------------------------------------------------------------------------------------------


def text_vocab_size(tokenizer: Any) -> int:
    """Ids of a text-only model: the text pieces and the two markers (up to the first unit)."""
    mask = torch.as_tensor(tokenizer.speech_token_mask(), dtype=torch.bool)
    markers = max(tokenizer.text_marker_id, tokenizer.speech_marker_id) + 1
    first_unit = int(mask.nonzero()[0].item()) if mask.any() else markers
    return max(markers, first_unit)


def resolve_vocab_size(config: TrainConfig, tokenizer: Any) -> int:
    v = config.model.vocab_size
    if v == "tokenizer":
        return int(tokenizer.vocab_size)
    if v == "text":
        return text_vocab_size(tokenizer)
    return int(v)


def initial_config(config: TrainConfig, tokenizer: Any) -> tuple[LLaMAConfig, float, int | None]:
    """``(architecture, rms_norm_eps, vocabulary of init_from or None)`` of the model a fresh run
    starts from, from JSON files only: every rank needs it to build the model on the meta device."""
    m = config.model
    vocab = resolve_vocab_size(config, tokenizer)
    if not m.init_from:
        return model_config(m.preset, **{**m.overrides, "vocab_size": vocab}), 1e-5, None
    mcfg, eps = read_model_config(m.init_from)
    source_vocab = mcfg.vocab_size
    if m.overrides:  # e.g. rope_theta 1e4 -> 1e5 when LLaMA-2 becomes Spirit LM (no weight changes)
        mcfg = config_from_dict({**config_to_dict(mcfg), **m.overrides, "vocab_size": source_vocab})
    if vocab < source_vocab:
        raise ValueError(f"{m.init_from}: vocabulary {source_vocab} is larger than the requested {vocab} (--model.vocab_size)")
    return config_from_dict({**config_to_dict(mcfg), "vocab_size": vocab}), eps, source_vocab


def initial_weights(config: TrainConfig, mcfg: LLaMAConfig, source_vocab: int | None) -> dict[str, Tensor]:
    """The whole float32 weights (fairseq2 names) a fresh run starts from; read on rank 0 only.

    ``init_from`` is read tensor by tensor (memory-mapped safetensors) and only the embedding and
    output tables are copied to add the new rows, so the peak is one copy of the model. What it
    starts from is logged as :class:`TrainRecipe`'s lines are (``[spiritlm train] ...``).
    """
    def log(line: str) -> None:
        logging.getLogger(__name__).info(f"[{TrainRecipe.name}] {line}")

    m = config.model
    if not m.init_from:
        state = dict(create_model(mcfg, seed=m.seed).state_dict())
        log(f"random {m.preset} model ({_count(state, mcfg) / 1e6:.2f} M parameters, vocabulary {mcfg.vocab_size})")
        return state
    state = read_model_weights(m.init_from)
    log(f"initialised from {m.init_from} ({_count(state, mcfg) / 1e6:.2f} M parameters, vocabulary {source_vocab})")
    if source_vocab is not None and mcfg.vocab_size > source_vocab:
        source_cfg = config_from_dict({**config_to_dict(mcfg), "vocab_size": source_vocab})
        state, _ = extend_vocabulary_state(state, source_cfg, mcfg.vocab_size, noise_std=m.new_rows_noise_std, seed=m.seed)
        log(f"vocabulary extended to {mcfg.vocab_size} (new rows: mean + {m.new_rows_noise_std} x std noise)")
    return state


def _count(state: dict[str, Tensor], mcfg: LLaMAConfig) -> int:
    n = sum(v.numel() for v in state.values())
    return n - (state["final_proj.weight"].numel() if mcfg.tied_embeddings and "final_proj.weight" in state else 0)


def build_model(
    mcfg: LLaMAConfig, eps: float, config: TrainConfig, d: Dist, compute_dtype: torch.dtype, weights: dict[str, Tensor] | None,
    *, fresh: bool,
) -> nn.Module:
    """This rank's model, wrapped for its world size (activation checkpointing, DDP or FSDP2).

    Args:
        weights: the whole float32 weights of a fresh run on rank 0 (:func:`initial_weights`);
            None on the other ranks and when resuming (the checkpoint is loaded afterwards).
        fresh: a fresh run (rank 0's ``weights`` are copied to every rank).

    FSDP: the model is built on the meta device, sharded, then materialised: each rank allocates
    only its shards, and a fresh run's weights reach them by broadcast from rank 0, one tensor
    at a time (``set_model_state_dict(broadcast_from_rank0=True)``). DDP: the replicas are
    built uninitialised and DDP's constructor broadcasts rank 0's weights.
    """
    t = config.train
    if d.world_size > 1 and t.parallel == "fsdp":
        from fairseq2.models.llama import create_llama_model
        from fairseq2.nn.utils.module import reset_non_persistent_buffers
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        if mcfg.tied_embeddings:
            raise ValueError("tied embeddings are not supported with --train.parallel fsdp (use ddp)")
        with torch.device("meta"):
            model = create_llama_model(mcfg)
        for mod in model.modules():
            if isinstance(mod, RMSNorm):
                mod.eps = eps
        _apply_activation_checkpointing(model, config)
        mp = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)
        for layer in model.decoder.layers:  # type: ignore[attr-defined]
            fully_shard(layer, mp_policy=mp)
        fully_shard(model, mp_policy=mp)
        model.to_empty(device=d.device)
        reset_non_persistent_buffers(model)  # the rotary tables: computed, not stored
        if fresh:
            options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
            set_model_state_dict(model, weights if d.main and weights is not None else {}, options=options)
        return model
    model = create_model(mcfg, init=False, device=d.device, rms_norm_eps=eps)
    if weights is not None:
        load_weights_into(model, weights, source=str(config.model.init_from or f"the {config.model.preset} preset"))
    _apply_activation_checkpointing(model, config)
    if d.world_size == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[d.device.index] if d.device.type == "cuda" else None)


def _apply_activation_checkpointing(model: nn.Module, config: TrainConfig) -> None:
    if config.train.activation_checkpointing:
        from fairseq2.models.transformer_lm.ac import apply_ac_to_transformer_lm

        apply_ac_to_transformer_lm(model, every_nth_layer=1)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Loss
# ---------------------------------------------------------------------------------------------


def token_losses(model: nn.Module, input_ids: Tensor, labels: Tensor) -> Tensor:
    """Per-token cross-entropy ``[B, L]`` in float32 (0 where ``labels == -100``), nats."""
    logits = model(input_ids, BatchLayout.of(input_ids))
    losses = F.cross_entropy(
        logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE, reduction="none"
    )
    return losses.view(labels.shape)


def subset_losses(batch: dict[str, Any], losses: Tensor, labels: Tensor) -> dict[str, tuple[float, float]]:
    """``{subset: (loss sum, target count)}`` of a batch.

    Uses the per-token ``subset_ids`` ``[B, L]`` + ``subsets`` names of
    :class:`~spiritlm.data.loader.PackedLoader` batches (a packed row mixes documents of several
    subsets); falls back to one ``subset`` name per row, or to nothing.
    """
    valid = labels != IGNORE
    out: dict[str, tuple[float, float]] = {}
    ids, names = batch.get("subset_ids"), batch.get("subsets")
    if isinstance(ids, Tensor) and names is not None and ids.shape == labels.shape:
        ids = ids.to(losses.device)
        for k, name in enumerate(names):
            m = valid & (ids == k)
            if m.any():
                out[str(name)] = (float(losses[m].sum()), float(m.sum()))
        return out
    rows = batch.get("subset")
    if isinstance(rows, str):
        rows = [rows] * labels.size(0)
    if rows is None or len(rows) != labels.size(0):
        return out
    for name, l, c in zip(rows, (losses * valid).sum(1).tolist(), valid.sum(1).tolist()):
        prev = out.get(str(name), (0.0, 0.0))
        out[str(name)] = (prev[0] + l, prev[1] + c)
    return out


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------


def _write_atomic(path: Path, text: str) -> None:
    with atomic_file(path) as f:
        f.write(text)


# ---------------------------------------------------------------------------------------------
# The recipe
# ---------------------------------------------------------------------------------------------


def _window_of(saved: dict[str, Any] | None) -> dict[str, Any]:
    """The training-loss log window (sums since the last record) from a checkpoint's trainer
    state, or an empty one (checkpoints of older versions have none)."""
    w: dict[str, Any] = {"loss": 0.0, "count": 0.0, "subsets": {}, "tokens": 0, "t0": time.perf_counter()}
    if isinstance(saved, dict):
        w.update(loss=float(saved.get("loss", 0.0)), count=float(saved.get("count", 0.0)), tokens=int(saved.get("tokens", 0)),
                 subsets={str(k): [float(v[0]), float(v[1])] for k, v in dict(saved.get("subsets", {})).items()})
    return w


def _merged_windows(saved: list[dict[str, Any] | None]) -> dict[str, Any]:
    """The windows of every saving rank summed (a resume with another world size)."""
    out = _window_of(None)
    for s in saved:
        w = _window_of(s)
        out["loss"] += w["loss"]
        out["count"] += w["count"]
        out["tokens"] += w["tokens"]
        for k, (a, b) in w["subsets"].items():
            acc = out["subsets"].setdefault(k, [0.0, 0.0])
            acc[0] += a
            acc[1] += b
    return out


LoaderFactory = Callable[[TrainConfig, Any, int, int], tuple[Any, dict[str, Callable[[], Iterable[dict[str, Any]]]]]]


class TrainRecipe(Recipe):
    """One training run (fresh or resumed) of a :class:`~spiritlm.train.config.TrainConfig`.

    Args:
        config: the recipe.
        tokenizer: the text tokenizer (default: loaded from ``data.tokenizer`` or the data
            directory).
        loaders: ``(config, tokenizer, rank, world_size) -> (train_loader, {subset: make_val})``
            (default: :func:`spiritlm.train.data.build_loaders`). The train loader is iterable
            over ``{"input_ids": [B, L], "labels": [B, L], "subset": …}`` and has
            ``state_dict()``/``load_state_dict()``; each ``make_val()`` returns a fresh iterable
            over a subset's validation batches.

    Progress lines are ``logging`` records of this module (rank 0; :mod:`spiritlm.logs`).
    """

    name = "spiritlm train"

    def __init__(
        self,
        config: TrainConfig,
        *,
        tokenizer: Any | None = None,
        loaders: LoaderFactory | None = None,
    ) -> None:
        self.config = config
        self.cpu_threads = config.train.num_threads  # pinned by Recipe.run
        self.tokenizer = tokenizer
        self._loaders = loaders
        self.step = 0
        self.summary: dict[str, Any] = {"train_loss": {}, "val": {}, "output_dir": str(config.train.output_dir)}

    # -- setup ------------------------------------------------------------------------------

    def setup(self) -> None:
        """Everything before the first step, in the order that keeps runs reproducible."""
        t = self.config.train
        check_inputs(self.config, data=self._loaders is None, tokenizer=self.tokenizer is None)
        self.d = d = Dist()
        self.main, self.progress = d.main, t.progress
        self.run_dir = Path(t.output_dir)
        self.end = t.max_steps if t.stop_after is None else min(t.max_steps, t.stop_after)
        self._setup_run_dir()
        seed_everything(t.seed + d.rank)
        self._setup_tokenizer()
        use_bf16 = t.dtype == "bfloat16" or (t.dtype == "auto" and d.device.type == "cuda")
        self.compute_dtype = torch.bfloat16 if use_bf16 else torch.float32
        # Under FSDP the MixedPrecisionPolicy casts instead of autocast.
        self.use_autocast = use_bf16 and not (d.world_size > 1 and t.parallel == "fsdp")
        self.checkpointer = Checkpointer(self.run_dir, d, keep=t.keep_checkpoints, async_save=t.async_save)
        resumed = self._setup_model_and_optimizer()
        self._setup_data()
        if resumed is not None:
            self._restore(resumed)
        self.metrics = MetricsLog(self.run_dir, d, t.tensorboard)
        self.metrics.start(self.step if resumed is not None else None)
        self.resumed = resumed is not None
        self.schedule = Schedule(max_steps=t.max_steps, end=self.end, log_every=t.log_every, val_every=t.val_every,
                                 save_every=t.save_every, validate_first=True)

    def _setup_run_dir(self) -> None:
        if self.d.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            _write_atomic(self.run_dir / "config.yaml", self.config.to_yaml())
        self.d.barrier()

    def _setup_tokenizer(self) -> None:
        from spiritlm.train import data as data_mod

        if self.tokenizer is None:
            self.tokenizer = data_mod.load_tokenizer(self.config)
        tok_file = data_mod.tokenizer_path(self.config)
        if self.d.main and tok_file is not None and tok_file.is_file():
            from spiritlm.atomic import atomic_path

            with atomic_path(self.run_dir / "tokenizer.model") as tmp:
                shutil.copyfile(tok_file, tmp)
            units = Path(self.config.data.data_dir) / "speech_units.json"  # units the data holds: generation's speech mask
            if units.is_file():
                with atomic_path(self.run_dir / "speech_units.json") as tmp:
                    shutil.copyfile(units, tmp)

    def _find_resume_point(self) -> CheckpointInfo | None:
        """The newest complete checkpoint every rank can read; unreadable ones are set aside
        (:func:`spiritlm.checkpointing.find_resume_point`, the vocoder's rule too)."""
        info = find_resume_point(self.run_dir, inspect_checkpoint, self.d, "spiritlm train")
        if info is not None:
            self.log(f"resuming from {info.path}")
        return info

    def _setup_model_and_optimizer(self) -> CheckpointInfo | None:
        """Model and optimiser, fresh or loaded from the newest readable checkpoint."""
        while True:
            resumed = self._find_resume_point() if self.config.train.resume else None
            self._setup_model(resumed)
            self._setup_optimizer()
            if resumed is None:
                return None
            try:
                load_checkpoint(resumed, self.model, self.optimizer, self.d)
                return resumed
            except CheckpointError as exc:  # bytes that passed the length checks but do not decode
                error = exc
            warn_and_set_aside(resumed.path, error if self.d.main else None, self.d, "spiritlm train")

    def _setup_model(self, resumed: CheckpointInfo | None) -> None:
        d = self.d
        if resumed is not None:
            self.model_config = resumed.model_config
            self.rms_norm_eps = float(resumed.trainers[0].get("rms_norm_eps", 1e-5))
            weights = None
        else:
            self.model_config, self.rms_norm_eps, source_vocab = initial_config(self.config, self.tokenizer)
            weights = initial_weights(self.config, self.model_config, source_vocab) if d.main else None
        self.model = build_model(self.model_config, self.rms_norm_eps, self.config, d, self.compute_dtype, weights,
                                 fresh=resumed is None)
        del weights  # rank 0's whole copy: the shards hold the weights now
        self.model.train()

    def _setup_optimizer(self) -> None:
        o, t = self.config.optim, self.config.train
        self.optimizer = make_optimizer(self.model, self.config)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: lr_factor(s, warmup_steps=o.warmup_steps, max_steps=t.max_steps, schedule=o.schedule, min_lr_ratio=o.min_lr_ratio),
        )

    def _setup_data(self) -> None:
        from spiritlm.train import data as data_mod

        self.train_loader, val = (self._loaders or data_mod.build_loaders)(self.config, self.tokenizer, self.d.rank, self.d.world_size)
        self.val_loaders = {k: v for k, v in val.items() if k in self.config.data.val_subsets}

    def _restore(self, info: CheckpointInfo) -> None:
        """Scheduler, RNG and data position of a checkpoint (the weights and AdamW state are
        loaded with the model). Another world size re-partitions the data stream."""
        d, trainers = self.d, info.trainers
        self.scheduler.load_state_dict(trainers[0]["scheduler"])
        if info.world_size == d.world_size:
            set_rng_state(trainers[d.rank]["rng"])
            self._load_loader_state(lambda: self.train_loader.load_state_dict(trainers[d.rank]["loader"]), info)
            self._window = _window_of(trainers[d.rank].get("log_window"))
        else:
            self.log(f"the checkpoint was written by {info.world_size} process(es), this run has {d.world_size}: "
                     "weights and optimiser state resharded exactly, the data stream re-partitioned")
            set_rng_state(trainers[d.rank % info.world_size]["rng"])
            self._load_loader_state(lambda: self.train_loader.load_resharded([tr["loader"] for tr in trainers]), info)
            # the partial log window's sums are reduced over ranks when logged: all on rank 0
            self._window = _merged_windows([tr.get("log_window") for tr in trainers]) if d.main else _window_of(None)
        self.step = info.step

    def _load_loader_state(self, load: Callable[[], None], info: CheckpointInfo) -> None:
        """Restores the data position; a loader state that does not fit this data (another
        --data.data_dir, seq_len, batch_size, mix or seed) is one line naming both (issue 18 item 13)."""
        try:
            load()
        except (ValueError, KeyError, TypeError) as exc:
            reason = " ".join(str(exc).split())[:160]
            raise RecipeError(
                f"{info.path}: its data position does not fit --data.data_dir {self.config.data.data_dir} ({reason}): "
                "the token directory changed since the run started (rebuilt with other documents?); resume on the data it "
                "was started with, or start a new --train.output_dir"
            ) from None

    # -- the loop ---------------------------------------------------------------------------

    def autocast(self):
        if self.use_autocast:
            return torch.autocast(device_type=self.d.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def on_train_start(self) -> None:
        # a resumed run continues the log window its checkpoint saved (log_every need not divide
        # save_every): its first logged loss is the uninterrupted run's
        self._window = getattr(self, "_window", None) or _window_of(None)
        self._window["t0"] = time.perf_counter()
        self._batches: Iterator[dict[str, Any]] = iter(self.train_loader)

    def train_step(self, batches: Iterator[dict[str, Any]] | None = None) -> float:
        """One optimiser step over ``optim.grad_accum`` micro-batches (of ``batches``, default the
        run's loader); returns the gradient norm (also kept for the next training record)."""
        o, t, d, w = self.config.optim, self.config.train, self.d, self._window
        batches = self._batches if batches is None else batches
        micro = [next(batches) for _ in range(o.grad_accum)]
        n_targets = d.all_sum([float(sum(int((b["labels"] != IGNORE).sum()) for b in micro))])[0]
        vocab = self.model_config.vocab_size
        for i, batch in enumerate(micro):
            ids, labels = batch["input_ids"].to(d.device), batch["labels"].to(d.device)
            if int(ids.max()) >= vocab:
                raise ValueError(
                    f"{self.config.data.data_dir}: token id {int(ids.max())} >= model vocabulary {vocab} "
                    "(a text-only model cannot read speech tokens: check --data.subset_weights / --model.vocab_size)"
                )
            sync = contextlib.nullcontext()
            if d.world_size > 1 and t.parallel == "ddp" and i < len(micro) - 1:
                sync = self.model.no_sync()  # type: ignore[operator]
            with sync:
                with self.autocast():
                    losses = token_losses(self.model, ids, labels)
                # Sum over the whole accumulated (global) batch, so the gradient is the mean
                # over its target tokens whatever the split into micro-batches and ranks.
                loss = losses.sum() * (d.world_size / n_targets)
                loss.backward()
            w["loss"] += float(losses.sum().detach())
            w["count"] += float((labels != IGNORE).sum())
            for name, (l, c) in subset_losses(batch, losses.detach(), labels).items():
                acc = w["subsets"].setdefault(name, [0.0, 0.0])
                acc[0] += l
                acc[1] += c
            w["tokens"] += ids.numel()
        grad_norm = 0.0
        if o.grad_clip > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), o.grad_clip))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._grad_norm = grad_norm
        return grad_norm

    def log_train(self) -> None:
        """The training record of the window: loss per target token (all ranks), per subset, lr, tokens/s."""
        d, w, grad_norm, bar = self.d, self._window, self._grad_norm, self.bar
        total, count = d.all_sum([w["loss"], w["count"]])
        elapsed = time.perf_counter() - w["t0"]
        rec = {
            "loss": total / max(count, 1.0),
            "lr": self.scheduler.get_last_lr()[0],
            "grad_norm": grad_norm,
            "tokens_per_s": w["tokens"] * d.world_size / max(elapsed, 1e-9),
        }
        # one collective for every subset, whatever this rank saw (ranks must agree on calls)
        flat = d.all_sum([x for name in SUBSETS for x in w["subsets"].get(name, [0.0, 0.0])])
        for i, name in enumerate(SUBSETS):
            if flat[2 * i + 1] > 0:
                rec[f"loss_{name}"] = flat[2 * i] / flat[2 * i + 1]
        self.metrics.record("train", self.step, rec)
        self.summary["train_loss"][self.step] = rec["loss"]
        self.summary["tokens_per_s"] = rec["tokens_per_s"]
        if bar is not None:
            bar.set_postfix(loss=f"{rec['loss']:.3f}", lr=f"{rec['lr']:.2e}")
        parts = [f"{k.removeprefix('loss_')} {rec[k]:.3f}" for k in rec if k.startswith("loss_")]
        line = (f"step {self.step}/{self.end}: loss {rec['loss']:.3f}" + (f" ({', '.join(parts)})" if parts else "")
                + f", lr {rec['lr']:.2e}, {rec['tokens_per_s']:.0f} tokens/s")
        self.log(line)
        w.update(loss=0.0, count=0.0, subsets={})

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean validation loss (nats per target token) of each subset over ``data.val_batches``."""
        d, model = self.d, self.model
        was_training = model.training
        model.eval()
        out = {}
        for subset, make in self.val_loaders.items():
            total, count = 0.0, 0.0
            batches = iter(make())
            for _ in range(self.config.data.val_batches):
                batch = next(batches, None)
                # every rank runs the same number of forward passes (FSDP gathers in each one)
                if not d.all_have(batch is not None):
                    break
                ids, labels = batch["input_ids"].to(d.device), batch["labels"].to(d.device)
                with self.autocast():
                    losses = token_losses(model, ids, labels)
                total += float(losses.sum())
                count += float((labels != IGNORE).sum())
            total, count = d.all_sum([total, count])
            out[subset] = total / max(count, 1.0)
        model.train(was_training)
        return out

    def validate(self) -> None:
        """:meth:`evaluate` at this step, recorded (step 0 of a fresh run: the starting point)."""
        if not self.val_loaders:
            return
        step = self.step
        val = self.evaluate()
        self.metrics.record("val", step, val)
        self.summary["val"][step] = val
        self.log(f"step {step}: val " + ", ".join(f"{k} {v:.3f}" for k, v in val.items()))

    def save_checkpoint(self) -> Path:
        """``checkpoints/step_N``: this rank's shards and trainer state (asynchronous with
        ``train.async_save``: marked complete by the next save or the end of training)."""
        w = self._window
        log_window = {"loss": float(w["loss"]), "count": float(w["count"]), "tokens": int(w["tokens"]),
                      "subsets": {k: [float(a), float(b)] for k, (a, b) in w["subsets"].items()}}
        trainer_state = {"scheduler": self.scheduler.state_dict(), "rng": rng_state(), "loader": self.train_loader.state_dict(),
                         "rms_norm_eps": self.rms_norm_eps, "log_window": log_window}
        return self.checkpointer.save(self.step, self.model, self.optimizer, self.model_config, trainer_state)

    # -- the end ----------------------------------------------------------------------------

    def export(self) -> None:
        """``output_dir/hf`` (Hugging Face LLaMA + tokenizer), atomically, once ``max_steps`` is
        reached: rank 0 streams it from the final checkpoint's shards, one tensor at a time
        (:func:`spiritlm.train.export.export_checkpoint`), so no rank gathers the model."""
        self.checkpointer.wait()
        if self.step < self.config.train.max_steps or not self.config.train.export_hf:
            return
        if self.d.main:
            from spiritlm.train.export import export_checkpoint

            tok_file = self.run_dir / "tokenizer.model"
            export_checkpoint(
                self.run_dir / "checkpoints" / f"step_{self.step}", self.run_dir / "hf",
                tokenizer_model=tok_file if tok_file.is_file() else None,
                bos_token_id=getattr(self.tokenizer, "bos_id", 1), eos_token_id=getattr(self.tokenizer, "eos_id", 2),
            )
            self.log(f"exported {self.run_dir / 'hf'} (step {self.step})")
        self.d.barrier()

    def finish(self) -> None:
        self.export()

    def cleanup(self) -> None:
        if self.d.main:
            history = read_history(self.run_dir / "metrics.jsonl")
            _write_atomic(self.run_dir / "metrics.json", json.dumps({**history, "final_step": self.step}, indent=1) + "\n")
        self.metrics.close()
        self.checkpointer.close()
        self.d.close()

    def run(self) -> dict[str, Any]:
        """setup, train, export (:meth:`finish`), cleanup; returns the summary of the steps run by this invocation:
        ``{"train_loss": {step: loss}, "val": {step: {subset: loss}}, "final_step", "tokens_per_s",
        "output_dir"}``."""
        super().run()
        self.summary["final_step"] = self.step
        return self.summary


def train(config: TrainConfig, **kwargs: Any) -> dict[str, Any]:
    """Runs (or resumes) a training run: ``TrainRecipe(config, **kwargs).run()``."""
    return TrainRecipe(config, **kwargs).run()
