"""Building the fairseq2 LLaMA model, extending its vocabulary, saving and loading weights.

Weights are stored as safetensors with fairseq2's parameter names (``decoder_frontend.embed.weight``,
``decoder.layers.0.self_attn.q_proj.weight``, …) next to a ``model_config.json``; Hugging Face
layout is handled by :mod:`spiritlm.model.hf`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from fairseq2.models.llama import LLaMAConfig, create_llama_model
from fairseq2.models.transformer_lm import TransformerLM
from fairseq2.nn import RMSNorm

from spiritlm.model.config import load_config, save_config

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "model_config.json"


def create_model(
    config: LLaMAConfig,
    *,
    seed: int | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    init: bool = True,
    rms_norm_eps: float = 1e-5,
) -> TransformerLM:
    """Builds fairseq2's LLaMA decoder from ``config``.

    Args:
        config: the architecture.
        seed: seeds torch's generator before initialisation (reproducible weights); the global
            RNG state is restored afterwards.
        device: where the parameters live.
        dtype: parameter dtype.
        init: initialise the parameters (fairseq2's truncated normal). With ``False`` the model
            is built on the meta device and materialised uninitialised: use it when a state dict
            will be loaded right after (a 7B model is then built in seconds).
        rms_norm_eps: epsilon of every RMSNorm (LLaMA-2: 1e-5; some checkpoints use 1e-6).

    Returns:
        The model in training mode. ``model(seqs, BatchLayout.of(seqs))`` maps token ids
        ``[B, L]`` to logits ``[B, L, vocab_size]``.
    """
    device = torch.device(device)
    if not init:
        with torch.device("meta"):
            model = create_llama_model(config)
        model = model.to_empty(device=device).to(dtype)
        from fairseq2.nn.utils.module import reset_non_persistent_buffers

        reset_non_persistent_buffers(model)
        if config.tied_embeddings:  # to_empty materialises the shared table twice: re-tie it
            model.final_proj.weight = model.decoder_frontend.embed.weight
    else:
        rng = torch.random.get_rng_state()
        try:
            if seed is not None:
                torch.manual_seed(seed)
            with torch.device(device):
                model = create_llama_model(config)
        finally:
            if seed is not None:
                torch.random.set_rng_state(rng)
        model = model.to(dtype)
    for m in model.modules():
        if isinstance(m, RMSNorm):
            m.eps = rms_norm_eps
    return model


def num_parameters(model: nn.Module) -> int:
    """Number of distinct parameters (tied tables counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


@torch.no_grad()
def extend_vocabulary_state(
    state: dict[str, Tensor],
    config: LLaMAConfig,
    vocab_size: int,
    *,
    noise_std: float = 0.1,
    seed: int = 0,
) -> tuple[dict[str, Tensor], LLaMAConfig]:
    """Grows the embedding and output tables of a fairseq2-named state dict to ``vocab_size`` rows.

    The first ``config.vocab_size`` rows are kept; each new row is the mean of the existing
    rows plus Gaussian noise whose per-dimension standard deviation is ``noise_std`` times the
    standard deviation of the existing rows in that dimension (``noise_std=0`` gives identical
    rows). This is how the speech tokens are added to LLaMA-2's 32000-piece vocabulary. Only
    the two tables are copied: ``state`` is updated in place and returned with the new config.
    """
    import dataclasses

    old = config.vocab_size
    if vocab_size < old:
        raise ValueError(f"extend_vocabulary: new size {vocab_size} < current size {old}")
    gen = torch.Generator().manual_seed(seed)

    def grow(w: Tensor) -> Tensor:
        w32 = w.float().cpu()
        mean, std = w32.mean(0), w32.std(0)
        noise = torch.randn(vocab_size - old, w.shape[1], generator=gen) * std * noise_std
        return torch.cat([w32, mean + noise]).to(w.dtype).to(w.device)

    state["decoder_frontend.embed.weight"] = grow(state["decoder_frontend.embed.weight"])
    if not config.tied_embeddings:
        state["final_proj.weight"] = grow(state["final_proj.weight"])
    else:
        state["final_proj.weight"] = state["decoder_frontend.embed.weight"]
    return state, dataclasses.replace(config, vocab_size=vocab_size)


def extend_vocabulary(
    model: TransformerLM,
    config: LLaMAConfig,
    vocab_size: int,
    *,
    noise_std: float = 0.1,
    seed: int = 0,
) -> tuple[TransformerLM, LLaMAConfig]:
    """Returns a copy of ``model`` whose embedding and output tables have ``vocab_size`` rows
    (:func:`extend_vocabulary_state` on its weights); the input model is left unchanged."""
    state = dict(model.state_dict())
    state, new_config = extend_vocabulary_state(state, config, vocab_size, noise_std=noise_std, seed=seed)
    eps = next((m.eps for m in model.modules() if isinstance(m, RMSNorm)), 1e-5)
    p = next(model.parameters())
    new_model = create_model(new_config, init=False, device=p.device, dtype=p.dtype, rms_norm_eps=eps)
    load_weights_into(new_model, state)
    return new_model, new_config


def load_weights_into(model: nn.Module, state: dict[str, Tensor], *, source: str = "state dict") -> None:
    """Loads a fairseq2-named state dict strictly, with an error naming ``source`` on mismatch."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{source}: weights do not match the model (missing {missing[:5]}{'…' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'…' if len(unexpected) > 5 else ''})"
        )
    for k, v in state.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise ValueError(f"{source}: {k} has shape {tuple(v.shape)}, the model expects {tuple(expected[k].shape)}")
    model.load_state_dict(state, strict=True)


def save_model(model: nn.Module, config: LLaMAConfig, directory: str | Path) -> Path:
    """Writes ``model.safetensors`` (fairseq2 names) and ``model_config.json`` into ``directory``."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    if config.tied_embeddings:
        state.pop("final_proj.weight", None)
    save_file(state, str(directory / WEIGHTS_NAME))
    save_config(config, directory / CONFIG_NAME)
    return directory


def load_model(
    directory: str | Path, *, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
) -> tuple[TransformerLM, LLaMAConfig]:
    """Reads a directory written by :func:`save_model`, or a sharded training checkpoint
    (``checkpoints/step_N`` with ``dcp/``; read one tensor at a time, whatever the number of
    processes that wrote it).

    Args:
        directory: holds ``model_config.json`` and ``model.safetensors`` or ``dcp/``.
        device: target device.
        dtype: parameter dtype (default: as stored).
    """
    from safetensors.torch import load_file

    from spiritlm.model.sharded import is_sharded_checkpoint, iter_model_tensors

    directory = Path(directory)
    sharded = is_sharded_checkpoint(directory)
    for name in (CONFIG_NAME,) if sharded else (WEIGHTS_NAME, CONFIG_NAME):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory / name}: missing (not a spiritlm model directory)")
    config = load_config(directory / CONFIG_NAME)
    if sharded:
        source = str(directory / "dcp")
        state = {k: v.to(device) for k, v in iter_model_tensors(directory)}
    else:
        source = str(directory / WEIGHTS_NAME)
        state = load_file(str(directory / WEIGHTS_NAME), device=str(device))
    if config.tied_embeddings:
        state["final_proj.weight"] = state["decoder_frontend.embed.weight"]
    stored = next(iter(state.values())).dtype
    model = create_model(config, init=False, device=device, dtype=dtype or stored)
    load_weights_into(model, {k: v.to(dtype or stored) for k, v in state.items()}, source=source)
    return model, config
