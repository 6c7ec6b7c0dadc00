"""Fixtures of the test suite that need the model stack (imported by tests as ``from fixtures import …``).

Data stand-ins (toy tokenizer, utterances, token directories) are in :mod:`spiritlm.data.synthetic`,
which the benchmarks share; what only tests need lives here.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch


def tiny_hf_llama(
    directory: str | Path,
    *,
    vocab_size: int,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 96,
    max_position_embeddings: int = 256,
    rope_theta: float = 1e5,
    seed: int = 0,
    logit_scale: float = 20.0,
    tokenizer_model: str | Path | None = None,
) -> Path:
    """Saves a random ``transformers.LlamaForCausalLM`` (plus ``tokenizer.model``) to ``directory``.

    ``logit_scale`` multiplies the output table: random models have near-uniform logits, and
    sharper ones keep greedy paths well separated from ties.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        rope_theta=rope_theta,
        rms_norm_eps=1e-5,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(logit_scale)
    directory = Path(directory)
    model.save_pretrained(directory, safe_serialization=True)
    if tokenizer_model is not None:
        shutil.copyfile(tokenizer_model, directory / "tokenizer.model")
    return directory
