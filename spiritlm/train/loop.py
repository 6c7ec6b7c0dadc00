"""The training loop: continued pretraining of the fairseq2 LLaMA on the interleaved data.

Choice: a plain PyTorch loop (torchtune style) around the fairseq2 model, not fairseq2's
``Trainer``/recipe machinery. fairseq2 0.8.1's recipes are bound to its asset store, dataset
registry and dependency container (``init_fairseq2``, asset cards, ``DatasetHandler``s) and to
its own data pipeline; wiring our resumable packed loader into them costs more than the ~300
lines here and makes exact resumption (loader, RNG and optimiser state in plain
``weights_only`` files) harder to guarantee and test. The model itself, its initialisation, the
Hugging Face interop and the KV cache are fairseq2's.

What it does: AdamW (no decay on norms), linear warmup then constant or cosine, gradient
clipping and accumulation, bfloat16 autocast on GPU / float32 on CPU, DDP or FSDP2 under
``torchrun``, per-subset validation loss, TensorBoard + JSONL metrics + tqdm, and checkpoints
(``checkpoints/step_N/``: ``model.safetensors`` + ``model_config.json``, ``optimizer.pt``,
``trainer_state_rank{R}.pt`` with the scheduler, RNG and data-loader state, ``COMPLETE``) from
which a resumed run reproduces the uninterrupted run's losses exactly on CPU.

Memory note for 7B: every process builds the initial model on CPU in float32 (27 GB for
LLaMA-2 7B; 8 processes per node need ~220 GB of host memory) before moving it to its GPU and
sharding it (FSDP); parameters and AdamW state stay float32 (bfloat16 compute).

Outputs in ``output_dir``: ``config.yaml`` (the resolved recipe), ``metrics.jsonl`` (one
record per log/validation), ``metrics.json`` (summary), ``tb/`` (TensorBoard),
``tokenizer.model``, ``checkpoints/``, ``hf/`` (Hugging Face export at the end).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from torch import Tensor, nn

from fairseq2.nn import BatchLayout, RMSNorm

from spiritlm.model import (
    create_model,
    extend_vocabulary,
    find_latest_checkpoint,
    load_any_model,
    load_weights_into,
    load_model,
    model_config,
    num_parameters,
    save_hf_model,
)
from spiritlm.model.config import config_from_dict, config_to_dict
from spiritlm.train.config import SUBSETS, TrainConfig

IGNORE = -100

# ---------------------------------------------------------------------------------------------
# Distributed setup
# ---------------------------------------------------------------------------------------------


class Dist:
    """Rank, world size and device of this process (a single process when not under torchrun)."""

    def __init__(self) -> None:
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if torch.cuda.is_available():
            self.device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
        self.initialised_here = False
        if self.world_size > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
            self.initialised_here = True

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_sum(self, values: list[float]) -> list[float]:
        if self.world_size == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def all_have(self, flag: bool) -> bool:
        """True when ``flag`` holds on every rank (keeps ranks in lockstep)."""
        if self.world_size == 1:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return bool(t.item() > 0)

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def close(self) -> None:
        if self.initialised_here:
            dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# Schedules, optimiser, RNG
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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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


def build_initial_model(config: TrainConfig, tokenizer: Any, device: torch.device, log: Callable[[str], None]):
    """The model a fresh run starts from: random (preset) or ``init_from`` (+ vocabulary extension)."""
    m = config.model
    vocab = resolve_vocab_size(config, tokenizer)
    if m.init_from:
        model, mcfg, _ = load_any_model(m.init_from, device="cpu", dtype=torch.float32)
        log(f"initialised from {m.init_from} ({num_parameters(model) / 1e6:.2f} M parameters, vocabulary {mcfg.vocab_size})")
        if m.overrides:  # e.g. rope_theta 1e4 -> 1e5 when LLaMA-2 becomes Spirit LM
            d = {**config_to_dict(mcfg), **m.overrides}
            d["vocab_size"] = mcfg.vocab_size
            mcfg = config_from_dict(d)
            eps = next((x.eps for x in model.modules() if isinstance(x, RMSNorm)), 1e-5)
            rebuilt = create_model(mcfg, init=False, rms_norm_eps=eps)
            load_weights_into(rebuilt, model.state_dict(), source=f"{m.init_from} with overrides {m.overrides}")
            model = rebuilt
        if vocab > mcfg.vocab_size:
            model, mcfg = extend_vocabulary(model, mcfg, vocab, noise_std=m.new_rows_noise_std, seed=m.seed)
            log(f"vocabulary extended to {vocab} (new rows: mean + {m.new_rows_noise_std} x std noise)")
        elif vocab < mcfg.vocab_size:
            raise ValueError(f"{m.init_from}: vocabulary {mcfg.vocab_size} is larger than the requested {vocab}")
    else:
        mcfg = model_config(m.preset, **{**m.overrides, "vocab_size": vocab})
        model = create_model(mcfg, seed=m.seed)
        log(f"random {m.preset} model ({num_parameters(model) / 1e6:.2f} M parameters, vocabulary {vocab})")
    return model.to(device), mcfg


def wrap_model(model: nn.Module, config: TrainConfig, d: Dist, compute_dtype: torch.dtype) -> nn.Module:
    """Activation checkpointing, then DDP or FSDP2 wrapping when running with several processes."""
    if config.train.activation_checkpointing:
        from fairseq2.models.transformer_lm.ac import apply_ac_to_transformer_lm

        apply_ac_to_transformer_lm(model, every_nth_layer=1)  # type: ignore[arg-type]
    if d.world_size == 1:
        return model
    if config.train.parallel == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)
        for layer in model.decoder.layers:  # type: ignore[attr-defined]
            fully_shard(layer, mp_policy=mp)
        fully_shard(model, mp_policy=mp)
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[d.device.index] if d.device.type == "cuda" else None)


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------


def _sd_options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_model_state(model: nn.Module) -> dict[str, Tensor]:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_sd_options())


def save_checkpoint(run_dir: Path, step: int, model: nn.Module, mcfg, optimizer, scheduler, loader, d: Dist, keep: int) -> Path:
    """Writes ``checkpoints/step_N``: rank 0 the full (gathered) model and optimiser state,
    every rank its own scheduler/RNG/loader state; ``COMPLETE`` marks a finished checkpoint."""
    from safetensors.torch import save_file
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    from spiritlm.model.build import CONFIG_NAME, WEIGHTS_NAME
    from spiritlm.model.config import save_config

    ckpt = run_dir / "checkpoints" / f"step_{step}"
    state = full_model_state(model)  # collective under FSDP: every rank calls it
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
        torch.save(optim_state, ckpt / "optimizer.pt")
    d.barrier()
    torch.save(
        {"step": step, "scheduler": scheduler.state_dict(), "rng": rng_state(), "loader": loader.state_dict()},
        ckpt / f"trainer_state_rank{d.rank}.pt",
    )
    d.barrier()
    if d.main:
        (ckpt / "COMPLETE").write_text(f"{step}\n")
        if keep > 0:
            done = sorted(
                (int(p.name.removeprefix("step_")), p)
                for p in (run_dir / "checkpoints").glob("step_*")
                if (p / "COMPLETE").is_file()
            )
            for _, p in done[:-keep]:
                shutil.rmtree(p, ignore_errors=True)
    d.barrier()
    return ckpt


def load_checkpoint(ckpt: Path, model: nn.Module, optimizer, scheduler, loader, d: Dist) -> int:
    """Restores model, optimiser, scheduler, RNG and loader state; returns the step."""
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    state = load_file(str(ckpt / "model.safetensors"))
    if "final_proj.weight" not in state and "decoder_frontend.embed.weight" in state:
        state["final_proj.weight"] = state["decoder_frontend.embed.weight"]
    set_model_state_dict(model, state, options=_sd_options())
    optim_state = torch.load(ckpt / "optimizer.pt", map_location="cpu", weights_only=True)
    set_optimizer_state_dict(model, optimizer, optim_state, options=_sd_options())
    trainer = ckpt / f"trainer_state_rank{d.rank}.pt"
    if not trainer.is_file():
        raise FileNotFoundError(f"{trainer}: missing (was the run saved with another world size?)")
    ts = torch.load(trainer, map_location="cpu", weights_only=True)
    scheduler.load_state_dict(ts["scheduler"])
    set_rng_state(ts["rng"])
    loader.load_state_dict(ts["loader"])
    return int(ts["step"])


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


@torch.no_grad()
def evaluate(
    model: nn.Module, val_loaders: dict[str, Callable[[], Iterable[dict[str, Any]]]], num_batches: int, d: Dist, autocast
) -> dict[str, float]:
    """Mean validation loss (nats per target token) of each subset."""
    was_training = model.training
    model.eval()
    out = {}
    for subset, make in val_loaders.items():
        total, count = 0.0, 0.0
        batches = iter(make())
        for _ in range(num_batches):
            batch = next(batches, None)
            # every rank runs the same number of forward passes (FSDP gathers in each one)
            if not d.all_have(batch is not None):
                break
            ids, labels = batch["input_ids"].to(d.device), batch["labels"].to(d.device)
            with autocast():
                losses = token_losses(model, ids, labels)
            total += float(losses.sum())
            count += float((labels != IGNORE).sum())
        total, count = d.all_sum([total, count])
        out[subset] = total / max(count, 1.0)
    model.train(was_training)
    return out


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


class _Logger:
    def __init__(self, run_dir: Path, d: Dist, tensorboard: bool) -> None:
        self.d = d
        self.path = run_dir / "metrics.jsonl"
        self.tb = None
        if d.main and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tb"))
            except ImportError:  # pragma: no cover - tensorboard is a dependency
                self.tb = None

    def record(self, kind: str, step: int, values: dict[str, float]) -> None:
        if not self.d.main:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"kind": kind, "step": step, **values}) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(f"{kind}/{k}", v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


LoaderFactory = Callable[[TrainConfig, Any, int, int], tuple[Any, dict[str, Callable[[], Iterable[dict[str, Any]]]]]]


def train(
    config: TrainConfig,
    *,
    tokenizer: Any | None = None,
    loaders: LoaderFactory | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Runs (or resumes) a training run.

    Args:
        config: the recipe.
        tokenizer: the text tokenizer (default: loaded from ``data.tokenizer`` or the data
            directory).
        loaders: ``(config, tokenizer, rank, world_size) -> (train_loader, {subset: make_val})``
            (default: :func:`spiritlm.train.data.build_loaders`). The train loader is iterable
            over ``{"input_ids": [B, L], "labels": [B, L], "subset": …}`` and has
            ``state_dict()``/``load_state_dict()``; each ``make_val()`` returns a fresh iterable
            over a subset's validation batches.
        log: line logger (default: print on rank 0).

    Returns:
        Summary: ``{"train_loss": {step: loss}, "val": {step: {subset: loss}}, "final_step",
        "tokens_per_s", "output_dir"}`` for the steps run by this invocation.
    """
    d = Dist()
    log = log or (lambda s: print(f"[spiritlm train] {s}", flush=True) if d.main else None)
    t = config.train
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    run_dir = Path(t.output_dir)
    if d.main:
        run_dir.mkdir(parents=True, exist_ok=True)
    d.barrier()
    seed_everything(t.seed + d.rank)

    from spiritlm.train import data as data_mod

    if tokenizer is None:
        tokenizer = data_mod.load_tokenizer(config)
    tok_file = data_mod.tokenizer_path(config)
    if d.main:
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
        if tok_file is not None and tok_file.is_file():
            shutil.copyfile(tok_file, run_dir / "tokenizer.model")

    use_bf16 = t.dtype == "bfloat16" or (t.dtype == "auto" and d.device.type == "cuda")
    compute_dtype = torch.bfloat16 if use_bf16 else torch.float32

    def autocast():
        # Under FSDP the MixedPrecisionPolicy casts instead.
        if use_bf16 and not (d.world_size > 1 and config.train.parallel == "fsdp"):
            return torch.autocast(device_type=d.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    resume_from = find_latest_checkpoint(run_dir) if t.resume else None
    if resume_from is not None:
        inner, mcfg = load_model(resume_from, device=d.device, dtype=torch.float32)
        log(f"resuming from {resume_from}")
    else:
        inner, mcfg = build_initial_model(config, tokenizer, d.device, log)
    inner.train()
    model = wrap_model(inner, config, d, compute_dtype)
    optimizer = make_optimizer(model, config)
    o = config.optim
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: lr_factor(s, warmup_steps=o.warmup_steps, max_steps=t.max_steps, schedule=o.schedule, min_lr_ratio=o.min_lr_ratio),
    )
    train_loader, val_loaders = (loaders or data_mod.build_loaders)(config, tokenizer, d.rank, d.world_size)
    val_loaders = {k: v for k, v in val_loaders.items() if k in config.data.val_subsets}

    step = 0
    if resume_from is not None:
        step = load_checkpoint(resume_from, model, optimizer, scheduler, train_loader, d)
    if resume_from is None and d.main and (run_dir / "metrics.jsonl").exists():
        (run_dir / "metrics.jsonl").unlink()  # a fresh run does not inherit old records
    logger = _Logger(run_dir, d, t.tensorboard)
    summary: dict[str, Any] = {"train_loss": {}, "val": {}, "output_dir": str(run_dir)}
    end = t.max_steps if t.stop_after is None else min(t.max_steps, t.stop_after)
    it: Iterator[dict[str, Any]] = iter(train_loader)
    vocab = mcfg.vocab_size

    if resume_from is None and val_loaders and t.val_every and step < end:
        val = evaluate(model, val_loaders, config.data.val_batches, d, autocast)  # the starting point
        logger.record("val", 0, val)
        summary["val"][0] = val
        log("step 0: val " + ", ".join(f"{k} {v:.3f}" for k, v in val.items()))

    bar = None
    if t.progress and d.main and step < end:
        from tqdm.auto import tqdm

        bar = tqdm(total=end, initial=step, desc="train", unit="step", dynamic_ncols=True)

    tokens_seen, t0 = 0, time.perf_counter()
    window_loss, window_count = 0.0, 0.0
    window_subsets: dict[str, list[float]] = {}
    grad_norm = 0.0
    while step < end:
        micro = [next(it) for _ in range(o.grad_accum)]
        n_targets = d.all_sum([float(sum(int((b["labels"] != IGNORE).sum()) for b in micro))])[0]
        for i, batch in enumerate(micro):
            ids, labels = batch["input_ids"].to(d.device), batch["labels"].to(d.device)
            if int(ids.max()) >= vocab:
                raise ValueError(
                    f"{config.data.data_dir}: token id {int(ids.max())} >= model vocabulary {vocab} "
                    "(a text-only model cannot read speech tokens: check data.subset_weights / model.vocab_size)"
                )
            sync = contextlib.nullcontext()
            if d.world_size > 1 and t.parallel == "ddp" and i < len(micro) - 1:
                sync = model.no_sync()  # type: ignore[operator]
            with sync:
                with autocast():
                    losses = token_losses(model, ids, labels)
                # Sum over the whole accumulated (global) batch, so the gradient is the mean
                # over its target tokens whatever the split into micro-batches and ranks.
                loss = losses.sum() * (d.world_size / n_targets)
                loss.backward()
            window_loss += float(losses.sum().detach())
            window_count += float((labels != IGNORE).sum())
            for name, (l, c) in subset_losses(batch, losses.detach(), labels).items():
                acc = window_subsets.setdefault(name, [0.0, 0.0])
                acc[0] += l
                acc[1] += c
            tokens_seen += ids.numel()
        if o.grad_clip > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip))
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if bar is not None:
            bar.update(1)

        if step % t.log_every == 0 or step == end:
            total, count = d.all_sum([window_loss, window_count])
            elapsed = time.perf_counter() - t0
            rec = {
                "loss": total / max(count, 1.0),
                "lr": scheduler.get_last_lr()[0],
                "grad_norm": grad_norm,
                "tokens_per_s": tokens_seen * d.world_size / max(elapsed, 1e-9),
            }
            # one collective for every subset, whatever this rank saw (ranks must agree on calls)
            flat = d.all_sum([x for name in SUBSETS for x in window_subsets.get(name, [0.0, 0.0])])
            for i, name in enumerate(SUBSETS):
                if flat[2 * i + 1] > 0:
                    rec[f"loss_{name}"] = flat[2 * i] / flat[2 * i + 1]
            logger.record("train", step, rec)
            summary["train_loss"][step] = rec["loss"]
            summary["tokens_per_s"] = rec["tokens_per_s"]
            if bar is not None:
                bar.set_postfix(loss=f"{rec['loss']:.3f}", lr=f"{rec['lr']:.2e}")
            window_loss, window_count, window_subsets = 0.0, 0.0, {}

        if val_loaders and ((t.val_every and step % t.val_every == 0) or step == t.max_steps):
            val = evaluate(model, val_loaders, config.data.val_batches, d, autocast)
            logger.record("val", step, val)
            summary["val"][step] = val
            log(f"step {step}: val " + ", ".join(f"{k} {v:.3f}" for k, v in val.items()))

        if (t.save_every and step % t.save_every == 0) or step == end:
            save_checkpoint(run_dir, step, model, mcfg, optimizer, scheduler, train_loader, d, t.keep_checkpoints)

    if bar is not None:
        bar.close()
    summary["final_step"] = step
    if step >= t.max_steps and t.export_hf:
        state = full_model_state(model)
        if d.main:
            export = create_model(mcfg, init=False)
            export.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
            tok = tokenizer
            save_hf_model(
                export,
                mcfg,
                run_dir / "hf",
                tokenizer_model=run_dir / "tokenizer.model" if (run_dir / "tokenizer.model").is_file() else None,
                bos_token_id=getattr(tok, "bos_id", 1),
                eos_token_id=getattr(tok, "eos_id", 2),
            )
            log(f"exported {run_dir / 'hf'}")
        d.barrier()
    if d.main:
        history = _read_history(run_dir / "metrics.jsonl")
        (run_dir / "metrics.json").write_text(json.dumps({**history, "final_step": step}, indent=1) + "\n")
    logger.close()
    d.close()
    return summary


def _read_history(path: Path) -> dict[str, Any]:
    """Per-step train and validation records, the last record of a step winning (resumed runs)."""
    train: dict[int, dict[str, float]] = {}
    val: dict[int, dict[str, float]] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            kind, step = rec.pop("kind"), rec.pop("step")
            (train if kind == "train" else val)[step] = rec
    return {"train": {str(k): v for k, v in sorted(train.items())}, "val": {str(k): v for k, v in sorted(val.items())}}
