"""Consolidated exports of sharded training checkpoints, streamed one tensor at a time.

``spiritlm checkpoint export --checkpoint RUN/checkpoints/step_N --out DIR`` turns the shards
of a checkpoint (any number of writing ranks) into a Hugging Face LLaMA directory that
``spiritlm generate``, the evals, ``transformers`` and Meta-layout tools read. The safetensors
header is written first from the checkpoint's metadata (names, shapes, dtypes are known before
any weight is read); then each tensor is read from the shards, converted (HF names, rotary
layout of q/k, dtype) and written at its offset. The process holds one tensor at a time, never a
whole model, let alone two. The output folder appears whole (temporary name, then rename).

``spiritlm checkpoint info`` prints what a checkpoint holds without reading weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from spiritlm.atomic import atomic_dir
from spiritlm.errors import UserError

# torch is imported inside the functions: `spiritlm checkpoint …` loads this module to build its
# parser, and a wrong path must be reported before the seconds of torch's import
DTYPES = ("float32", "bfloat16", "float16")


def export_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    *,
    dtype: str = "float32",
    tokenizer_model: str | Path | None = None,
    bos_token_id: int | None = 1,
    eos_token_id: int | None = 2,
    overwrite: bool = True,
) -> Path:
    """Writes the Hugging Face export of a sharded checkpoint (see the module docstring).

    Args:
        checkpoint: ``checkpoints/step_N`` of a training run (complete).
        out: the Hugging Face directory to write (replaced atomically when ``overwrite``).
        dtype: stored dtype of the weights (float32, bfloat16, float16).
        tokenizer_model: sentencepiece model copied as ``tokenizer.model`` (default: the run's
            ``tokenizer.model`` two folders up, if any).
        bos_token_id, eos_token_id: written to the configs.

    Returns:
        ``out``.
    """
    from spiritlm.model.config import load_config
    from spiritlm.model.hf import EXPORT_INFO, hf_name, to_hf_tensor, write_hf_side_files, write_streamed_safetensors
    from spiritlm.model.sharded import iter_model_tensors, read_metadata, tensor_entries
    from spiritlm.train.checkpoint import CheckpointError, inspect_checkpoint

    ckpt = Path(checkpoint)
    if dtype not in DTYPES:
        raise UserError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if not (ckpt / "COMPLETE").is_file():
        raise UserError(f"{ckpt}: not a complete training checkpoint (no COMPLETE marker) (--checkpoint)")
    try:
        info = inspect_checkpoint(ckpt)
    except CheckpointError as exc:
        raise UserError(f"{exc} (--checkpoint)") from None
    config = load_config(ckpt / "model_config.json")
    eps = float(info.trainers[0].get("rms_norm_eps", 1e-5))
    import torch

    target = getattr(torch, dtype)
    entries = tensor_entries(read_metadata(ckpt))
    if config.tied_embeddings:
        entries.pop("final_proj.weight", None)
    hf_entries = {hf_name(n): (shape, target) for n, (shape, _) in entries.items()}

    def converted():
        for name, t in iter_model_tensors(ckpt):
            if name in entries:
                yield hf_name(name), to_hf_tensor(name, t, config).to(target)
            del t

    if tokenizer_model is None:
        run_tok = ckpt.parent.parent / "tokenizer.model"
        tokenizer_model = run_tok if run_tok.is_file() else None
    with atomic_dir(out, overwrite=overwrite, markers=("config.json",)) as tmp:
        write_streamed_safetensors(tmp / "model.safetensors", hf_entries, converted())
        write_hf_side_files(config, tmp, tokenizer_model=tokenizer_model, rms_norm_eps=eps, bos_token_id=bos_token_id,
                            eos_token_id=eos_token_id, pad_token_id=None, dtype=target)
        (tmp / EXPORT_INFO).write_text(json.dumps({"step": info.step}) + "\n")
    return Path(out)


def export(checkpoint: str, out: str, dtype: Literal["float32", "bfloat16", "float16"] = "float32", text_tokenizer: str | None = None,
           overwrite: bool = False) -> None:
    """Exports a training checkpoint as a Hugging Face LLaMA directory, one tensor at a time.

    Args:
        checkpoint: a complete checkpoints/step_N folder of a training run (written by any
            number of processes).
        out: the Hugging Face directory to write.
        dtype: stored dtype of the weights: float32, bfloat16 or float16.
        text_tokenizer: sentencepiece model to copy as tokenizer.model (default: the run's).
        overwrite: replace an existing --out (atomically).
    """
    ckpt = Path(checkpoint)
    if not ckpt.is_dir():
        raise UserError(f"{ckpt}: no such checkpoint folder (--checkpoint)")
    if text_tokenizer is not None and not Path(text_tokenizer).is_file():
        raise UserError(f"{text_tokenizer}: no such file (--text_tokenizer)")
    from spiritlm.atomic import check_new_output

    check_new_output(out, overwrite, markers=("config.json",))  # before any tensor is read
    path = export_checkpoint(ckpt, out, dtype=dtype, tokenizer_model=text_tokenizer, overwrite=overwrite)
    print(f"[spiritlm checkpoint export] wrote {path} from {ckpt}")


def info(checkpoint: str) -> None:
    """Prints what a training checkpoint holds (step, world size, tensors, bytes) without reading weights.

    Args:
        checkpoint: a checkpoints/step_N folder of a training run.
    """
    ckpt = Path(checkpoint)
    if not ckpt.is_dir():  # before the imports of torch
        raise UserError(f"{ckpt}: no such checkpoint folder (--checkpoint)")
    from spiritlm.model.sharded import OPTIM_PREFIX, read_metadata, tensor_entries
    from spiritlm.train.checkpoint import CheckpointError, inspect_checkpoint

    try:
        ci = inspect_checkpoint(ckpt)
    except CheckpointError as exc:
        raise UserError(f"{exc} (--checkpoint)") from None
    md = read_metadata(ckpt)
    import torch

    def size(entries):
        return sum(torch.Size(s).numel() * torch.empty((), dtype=d).element_size() for s, d in entries.values())

    model, optim = tensor_entries(md), tensor_entries(md, OPTIM_PREFIX)
    print(json.dumps({
        "checkpoint": str(ckpt),
        "complete": (ckpt / "COMPLETE").is_file(),
        "step": ci.step,
        "world_size": ci.world_size,
        "model_tensors": len(model),
        "parameters": sum(torch.Size(s).numel() for s, _ in model.values()),
        "model_bytes": size(model),
        "optimizer_bytes": size(optim),
        "shard_files": sorted(p.name for p in (ckpt / "dcp").glob("*.distcp")),
    }, indent=1))


COMMANDS = {"export": export, "info": info}
