"""Hugging Face LLaMA checkpoints <-> the fairseq2 model.

Import reads a directory in the layout of ``meta-llama/Llama-2-7b-hf`` or Meta's
``spirit-lm-base-7b`` (``config.json`` plus ``model.safetensors``, sharded
``model-0000k-of-0000n.safetensors`` with an index, or ``pytorch_model*.bin`` read with
``torch.load(weights_only=True)``). Export writes ``config.json``, ``generation_config.json`` and
``model.safetensors`` (plus the tokenizer files when a sentencepiece model is given) that
``transformers.LlamaForCausalLM.from_pretrained`` loads.

Weight renaming and the rotary permutation of the q/k projections (Hugging Face stores each
head's rotary pairs as two halves, fairseq2 and Meta's reference code interleave them) are done
by fairseq2's own converters, ``convert_llama_state_dict`` and ``_LLaMAHuggingFaceConverter``;
the configs are mapped here because fairseq2's exporter derives ``intermediate_size`` from the
LLaMA width formula, which does not hold for the ``tiny`` model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fairseq2.models.llama import LLaMAConfig, LLaMARoPEScaleConfig, convert_llama_state_dict
from fairseq2.models.llama.interop import _LLaMAHuggingFaceConverter
from fairseq2.models.transformer_lm import TransformerLM
from fairseq2.nn import RMSNorm

from spiritlm.atomic import atomic_dir
from spiritlm.model.build import create_model, load_weights_into
from spiritlm.model.config import ffn_hidden_dim

__all__ = [
    "is_hf_dir",
    "hf_to_llama_config",
    "llama_to_hf_config",
    "read_hf_state_dict",
    "load_hf_model",
    "save_hf_model",
    "read_hf_weights",
    "hf_name",
    "to_hf_tensor",
    "write_streamed_safetensors",
    "write_hf_side_files",
]


EXPORT_INFO = "spiritlm_export.json"


def is_hf_dir(path: str | Path) -> bool:
    """True when ``path`` holds a Hugging Face ``config.json`` of model type ``llama``."""
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text()).get("model_type") == "llama"
    except (OSError, ValueError):
        return False


def hf_to_llama_config(hf: dict[str, Any], *, source: str = "config.json") -> tuple[LLaMAConfig, float]:
    """Maps a Hugging Face ``LlamaConfig`` dict to ``(LLaMAConfig, rms_norm_eps)``.

    Raises:
        ValueError: naming ``source`` for features the fairseq2 LLaMA does not have (biases,
            another activation, another head size, unsupported RoPE scaling).
    """
    if hf.get("model_type") != "llama":
        raise ValueError(f"{source}: model_type is {hf.get('model_type')!r}, expected 'llama'")
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"{source}: hidden_act {hf['hidden_act']!r} is not supported (silu only)")
    if hf.get("attention_bias") or hf.get("mlp_bias"):
        raise ValueError(f"{source}: attention/MLP biases are not supported")
    dim, heads = hf["hidden_size"], hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or dim // heads
    if head_dim * heads != dim:
        raise ValueError(f"{source}: head_dim {head_dim} * heads {heads} != hidden_size {dim}")
    config = LLaMAConfig(
        model_dim=dim,
        max_seq_len=hf.get("max_position_embeddings", 4096),
        vocab_size=hf["vocab_size"],
        pad_idx=None,
        tied_embeddings=bool(hf.get("tie_word_embeddings", False)),
        num_layers=hf["num_hidden_layers"],
        num_attn_heads=heads,
        num_key_value_heads=hf.get("num_key_value_heads") or heads,
        ffn_inner_dim=hf["intermediate_size"],
        ffn_inner_dim_scale=1.0,
        ffn_inner_dim_multiplier=1.0,
        ffn_inner_dim_multiple_of=1,
        rope_theta=float(hf.get("rope_theta", 10_000.0)),
        shard_embed_dim=not bool(hf.get("tie_word_embeddings", False)),
    )
    scaling = hf.get("rope_scaling")
    if scaling:
        kind = scaling.get("rope_type", scaling.get("type"))
        if kind != "llama3":
            raise ValueError(f"{source}: rope_scaling of type {kind!r} is not supported (llama3 only)")
        config.use_scaled_rope = True
        config.rope_scale = LLaMARoPEScaleConfig(
            factor=scaling["factor"],
            frequency_factors=(scaling["low_freq_factor"], scaling["high_freq_factor"]),
            original_context_length=scaling["original_max_position_embeddings"],
        )
    return config, float(hf.get("rms_norm_eps", 1e-5))


def llama_to_hf_config(
    config: LLaMAConfig,
    *,
    rms_norm_eps: float = 1e-5,
    bos_token_id: int | None = 1,
    eos_token_id: int | None = 2,
    pad_token_id: int | None = None,
    torch_dtype: str = "float32",
) -> dict[str, Any]:
    """The Hugging Face ``config.json`` dict of a fairseq2 LLaMA config."""
    hf = _LLaMAHuggingFaceConverter().to_hg_config(config).data
    hf = dict(hf)
    hf.update(
        architectures=["LlamaForCausalLM"],
        intermediate_size=ffn_hidden_dim(config),
        rms_norm_eps=rms_norm_eps,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
        torch_dtype=torch_dtype,
    )
    return hf


def read_hf_state_dict(directory: str | Path) -> dict[str, Tensor]:
    """Reads every weight of a Hugging Face checkpoint directory (safetensors preferred).

    ``.bin`` files are read with ``torch.load(weights_only=True)``: nothing is unpickled.
    """
    from safetensors.torch import load_file

    directory = Path(directory)
    files: list[Path]
    if (directory / "model.safetensors").is_file():
        files = [directory / "model.safetensors"]
    elif (directory / "model.safetensors.index.json").is_file():
        index = json.loads((directory / "model.safetensors.index.json").read_text())
        files = [directory / f for f in sorted(set(index["weight_map"].values()))]
    elif (directory / "pytorch_model.bin").is_file():
        files = [directory / "pytorch_model.bin"]
    elif (directory / "pytorch_model.bin.index.json").is_file():
        index = json.loads((directory / "pytorch_model.bin.index.json").read_text())
        files = [directory / f for f in sorted(set(index["weight_map"].values()))]
    else:
        files = sorted(directory.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"{directory}: no model.safetensors / pytorch_model.bin (or their index)")
    state: dict[str, Tensor] = {}
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"{f}: listed in the index but missing")
        if f.suffix == ".safetensors":
            part = load_file(str(f))
        else:
            try:
                part = torch.load(f, map_location="cpu", weights_only=True)
            except Exception as e:  # noqa: BLE001 - name the file
                raise ValueError(f"{f}: cannot be read with weights_only=True ({e})") from e
        state.update(part)
    return state


def _weight_files(directory: Path) -> list[Path]:
    if (directory / "model.safetensors").is_file():
        return [directory / "model.safetensors"]
    if (directory / "model.safetensors.index.json").is_file():
        index = json.loads((directory / "model.safetensors.index.json").read_text())
        return [directory / f for f in sorted(set(index["weight_map"].values()))]
    return sorted(directory.glob("*.safetensors"))


def read_hf_weights(directory: str | Path, config: LLaMAConfig, *, dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
    """A Hugging Face LLaMA's weights under fairseq2 names, in ``dtype``, read one tensor at a
    time from memory-mapped safetensors (``.bin`` checkpoints: :func:`read_hf_state_dict`).

    The peak is one copy of the weights in ``dtype`` plus one tensor: what rank 0 holds when it
    initialises a sharded 7B run (:mod:`spiritlm.train.recipe`).
    """
    from safetensors import safe_open

    directory = Path(directory)
    files = _weight_files(directory)
    if not files:
        state = read_hf_state_dict(directory)
    else:
        state = {}
        for f in files:
            if not f.is_file():
                raise FileNotFoundError(f"{f}: listed in the index but missing")
            with safe_open(str(f), framework="pt") as st:
                for key in st.keys():
                    if not key.endswith("rotary_emb.inv_freq"):
                        state[key] = st.get_tensor(key).to(dtype)
    if config.tied_embeddings:
        state.pop("lm_head.weight", None)
    state = {k: v for k, v in state.items() if not k.endswith("rotary_emb.inv_freq")}
    if "model.embed_tokens.weight" not in state:
        raise ValueError(f"{directory}: no model.embed_tokens.weight (not a LlamaForCausalLM checkpoint)")
    converted = convert_llama_state_dict(state, config)
    for k in list(converted):
        converted[k] = converted[k].to(dtype)  # type: ignore[union-attr]  # one tensor at a time
    return converted  # type: ignore[return-value]


def load_hf_model(
    directory: str | Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = torch.float32,
) -> tuple[TransformerLM, LLaMAConfig]:
    """Imports a Hugging Face LLaMA directory into the fairseq2 model.

    Args:
        directory: holds ``config.json`` and the weights.
        device: target device.
        dtype: parameter dtype (``None``: as stored).

    Returns:
        ``(model, config)`` with the model in training mode.
    """
    directory = Path(directory)
    cfg_path = directory / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path}: missing (not a Hugging Face model directory)")
    config, eps = hf_to_llama_config(json.loads(cfg_path.read_text()), source=str(cfg_path))
    state = read_hf_state_dict(directory)
    state.pop("lm_head.weight", None) if config.tied_embeddings else None
    state = {k: v for k, v in state.items() if not k.endswith("rotary_emb.inv_freq")}
    if "model.embed_tokens.weight" not in state:
        raise ValueError(f"{directory}: no model.embed_tokens.weight (not a LlamaForCausalLM checkpoint)")
    stored = state["model.embed_tokens.weight"].dtype
    dtype = dtype or stored
    converted = convert_llama_state_dict(dict(state), config)
    converted = {k: v.to(dtype) for k, v in converted.items()}  # type: ignore[union-attr]
    model = create_model(config, init=False, device=device, dtype=dtype, rms_norm_eps=eps)
    load_weights_into(model, converted, source=str(directory))
    return model, config


def save_hf_model(
    model: TransformerLM,
    config: LLaMAConfig,
    directory: str | Path,
    *,
    tokenizer_model: str | Path | None = None,
    rms_norm_eps: float | None = None,
    bos_token_id: int | None = 1,
    eos_token_id: int | None = 2,
    pad_token_id: int | None = None,
    dtype: torch.dtype | None = None,
    step: int | None = None,
) -> Path:
    """Exports the model as a Hugging Face LLaMA directory, atomically.

    The files are written to a temporary sibling directory which then replaces ``directory``
    (an existing export is swapped out, never overwritten in place), so a reader sees the old
    export or the new one, never a mix.

    Args:
        model: the fairseq2 model (unwrapped: no DDP/FSDP).
        config: its config.
        directory: output directory (created).
        tokenizer_model: a sentencepiece model to copy as ``tokenizer.model`` with a
            ``tokenizer_config.json`` for ``LlamaTokenizer``.
        rms_norm_eps: epsilon written to ``config.json`` (default: the model's).
        bos_token_id, eos_token_id, pad_token_id: special ids written to the configs.
        dtype: dtype of the stored weights (default: the model's).
        step: the training step the weights are from, recorded in ``spiritlm_export.json`` so
            that :func:`spiritlm.model.load_any_model` can tell a stale export from newer
            checkpoints.

    Returns:
        ``directory``.
    """
    with atomic_dir(directory, overwrite=True) as tmp:
        _write_hf(model, config, tmp, tokenizer_model, rms_norm_eps, bos_token_id, eos_token_id, pad_token_id, dtype)
        if step is not None:
            (tmp / EXPORT_INFO).write_text(json.dumps({"step": int(step)}) + "\n")
    return Path(directory)


def export_step(directory: str | Path) -> int | None:
    """The training step recorded by :func:`save_hf_model` in ``directory`` (None: not recorded)."""
    try:
        return int(json.loads((Path(directory) / EXPORT_INFO).read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_hf(model, config, directory: Path, tokenizer_model, rms_norm_eps, bos_token_id, eos_token_id, pad_token_id, dtype) -> None:
    from safetensors.torch import save_file

    if rms_norm_eps is None:
        rms_norm_eps = next((m.eps for m in model.modules() if isinstance(m, RMSNorm)), 1e-5)
    state = {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
    dtype = dtype or next(iter(state.values())).dtype
    hf_state = _LLaMAHuggingFaceConverter().to_hg_state_dict(dict(state), config)
    hf_state = {k: v.to(dtype).contiguous() for k, v in hf_state.items()}  # type: ignore[union-attr]
    save_file(hf_state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    write_hf_side_files(config, directory, tokenizer_model=tokenizer_model, rms_norm_eps=rms_norm_eps,
                        bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id, dtype=dtype)


# -- streaming export (one tensor at a time) ----------------------------------------------------

_HF_NAMES = None


def hf_name(name: str) -> str:
    """The Hugging Face name of a fairseq2 LLaMA weight (fairseq2's own key map, reversed)."""
    global _HF_NAMES
    from fairseq2.models.llama.interop import _HG_KEY_MAP
    from fairseq2.models.utils.checkpoint import convert_state_dict, create_reverse_key_map

    if _HF_NAMES is None:
        _HF_NAMES = create_reverse_key_map(_HG_KEY_MAP)
    out = convert_state_dict({name: None}, _HF_NAMES)
    return next(iter(out))


def to_hf_tensor(name: str, tensor: Tensor, config: LLaMAConfig) -> Tensor:
    """A fairseq2 weight in Hugging Face's layout: the q/k projections' rotary pairs go from
    interleaved (fairseq2, Meta) to two halves per head (HF), as fairseq2's exporter does; every
    other weight is unchanged."""
    for proj, heads in (("q_proj", config.num_attn_heads), ("k_proj", config.num_key_value_heads)):
        if name.endswith(f"self_attn.{proj}.weight"):
            head_dim = config.model_dim // config.num_attn_heads
            w = tensor.view(heads, head_dim // 2, 2, config.model_dim)
            return w.transpose(1, 2).reshape(-1, config.model_dim)
    return tensor


_ST_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64"}


def write_streamed_safetensors(path: str | Path, entries: dict[str, tuple[tuple[int, ...], torch.dtype]], tensors) -> None:
    """Writes a safetensors file whose tensors come one at a time.

    Args:
        path: the file.
        entries: ``{name: (shape, dtype)}`` of every tensor, known up front (the header comes
            first in the format).
        tensors: iterable of ``(name, tensor)`` in any order, each matching its entry; only the
            tensor being written is held.
    """
    names = sorted(entries)
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset, begin = 0, {}
    for n in names:
        shape, dtype = entries[n]
        size = int(torch.Size(shape).numel()) * torch.empty((), dtype=dtype).element_size()
        header[n] = {"dtype": _ST_DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        begin[n] = offset
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data starts 8-byte aligned
    start = 8 + len(blob)
    written = set()
    with open(path, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        f.truncate(start + offset)
        for name, t in tensors:
            shape, dtype = entries[name]
            if tuple(t.shape) != tuple(shape) or t.dtype != dtype:
                raise ValueError(f"{path}: {name} is {tuple(t.shape)} {t.dtype}, the header says {tuple(shape)} {dtype}")
            f.seek(start + begin[name])
            f.write(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())  # no copy: the buffer itself
            written.add(name)
            del t  # released before the next tensor is read
    if written != set(names):
        raise ValueError(f"{path}: tensors not written: {sorted(set(names) - written)[:5]}")


def write_hf_side_files(
    config: LLaMAConfig,
    directory: Path,
    *,
    tokenizer_model,
    rms_norm_eps: float,
    bos_token_id: int | None,
    eos_token_id: int | None,
    pad_token_id: int | None,
    dtype: torch.dtype,
) -> None:
    """``config.json``, ``generation_config.json`` and the tokenizer files of an HF export."""
    dtype_name = str(dtype).removeprefix("torch.")
    hf_config = llama_to_hf_config(
        config,
        rms_norm_eps=rms_norm_eps,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        torch_dtype=dtype_name,
    )
    (directory / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
    gen = {"bos_token_id": bos_token_id, "eos_token_id": eos_token_id, "pad_token_id": pad_token_id}
    (directory / "generation_config.json").write_text(
        json.dumps({k: v for k, v in gen.items() if v is not None}, indent=2) + "\n"
    )
    if tokenizer_model is not None:
        shutil.copyfile(tokenizer_model, directory / "tokenizer.model")
        units = Path(tokenizer_model).with_name("speech_units.json")  # the units that exist (generation's mask)
        if units.is_file():
            shutil.copyfile(units, directory / "speech_units.json")
        tok_cfg = {
            "tokenizer_class": "LlamaTokenizer",
            "add_bos_token": True,
            "add_eos_token": False,
            "legacy": True,
            "model_max_length": config.max_seq_len,
        }
        (directory / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2) + "\n")
