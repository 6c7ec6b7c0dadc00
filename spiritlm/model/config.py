"""Model configurations: fairseq2's :class:`LLaMAConfig` with Spirit LM's presets.

The LM is fairseq2's LLaMA (``fairseq2.models.llama``) unchanged; what Spirit LM changes is the
vocabulary (LLaMA-2's 32000 BPE pieces plus the speech pieces, padded to 32512 for Base and
32768 for Expressive) and the RoPE base (θ = 1e5 instead of 1e4, as in the paper).

Presets (``model_config(name)``):

* ``tiny``: 4 layers, width 256, 4 heads, SwiGLU inner width 704, context 512: about 3.2 M
  parameters plus ``2 * 256 * vocab_size`` for the embedding and output tables. Trains on a
  laptop CPU; the vocabulary size comes from the text tokenizer.
* ``llama2-7b``: LLaMA-2 7B with LLaMA-2's vocabulary (32000) and θ 1e4: what continued
  pretraining starts from.
* ``llama2-7b-base`` / ``llama2-7b-expressive``: Spirit LM Base (vocabulary 32512) and
  Expressive (32768), θ 1e5, context 4096.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from fairseq2.models.llama import LLaMAConfig

__all__ = [
    "LLaMAConfig",
    "PRESETS",
    "model_config",
    "config_to_dict",
    "config_from_dict",
    "save_config",
    "load_config",
    "ffn_hidden_dim",
]


def _tiny() -> LLaMAConfig:
    return LLaMAConfig(
        model_dim=256,
        max_seq_len=512,
        vocab_size=32_000,  # replaced by the tokenizer's size by the recipes
        num_layers=4,
        num_attn_heads=4,
        num_key_value_heads=4,
        ffn_inner_dim=704,
        ffn_inner_dim_scale=1.0,
        ffn_inner_dim_multiplier=1.0,
        ffn_inner_dim_multiple_of=1,
        rope_theta=10_000.0,
        init_std_scale="layer",
    )


def _llama2_7b() -> LLaMAConfig:
    # fairseq2's "llama2_7b" arch: inner width 16384 * 2/3 rounded up to 256 = 11008.
    return LLaMAConfig(max_seq_len=4096, vocab_size=32_000, rope_theta=10_000.0)


def _spirit_base_7b() -> LLaMAConfig:
    return dataclasses.replace(_llama2_7b(), vocab_size=32_512, rope_theta=100_000.0)


def _spirit_expressive_7b() -> LLaMAConfig:
    return dataclasses.replace(_llama2_7b(), vocab_size=32_768, rope_theta=100_000.0)


PRESETS = {
    "tiny": _tiny,
    "llama2-7b": _llama2_7b,
    "llama2-7b-base": _spirit_base_7b,
    "llama2-7b-expressive": _spirit_expressive_7b,
}


def model_config(name: str, **overrides: Any) -> LLaMAConfig:
    """Returns a fresh preset config with ``overrides`` applied (field names of LLaMAConfig).

    Raises:
        ValueError: unknown preset or unknown field.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r} (choose from {', '.join(PRESETS)})")
    config = PRESETS[name]()
    return config_from_dict({**config_to_dict(config), **overrides})


def ffn_hidden_dim(config: LLaMAConfig) -> int:
    """The SwiGLU inner width fairseq2 builds from a config (HF's ``intermediate_size``)."""
    dim = int(config.ffn_inner_dim * config.ffn_inner_dim_multiplier)
    dim = int(dim * config.ffn_inner_dim_scale)
    m = config.ffn_inner_dim_multiple_of
    return m * ((dim + m - 1) // m)


def config_to_dict(config: LLaMAConfig) -> dict[str, Any]:
    """A JSON-able dict of every field (nested RoPE scaling included)."""
    d = dataclasses.asdict(config)
    d["rope_scale"]["frequency_factors"] = list(d["rope_scale"]["frequency_factors"])
    return d


def config_from_dict(d: dict[str, Any]) -> LLaMAConfig:
    """Inverse of :func:`config_to_dict`; unknown keys raise ``ValueError``."""
    from fairseq2.models.llama import LLaMARoPEScaleConfig

    d = dict(d)
    known = {f.name for f in dataclasses.fields(LLaMAConfig)}
    unknown = set(d) - known
    if unknown:
        raise ValueError(f"unknown LLaMAConfig fields: {sorted(unknown)}")
    rope = d.pop("rope_scale", None)
    config = LLaMAConfig(**d)
    if rope is not None:
        if isinstance(rope, dict):
            rope = dict(rope)
            if "frequency_factors" in rope:
                rope["frequency_factors"] = tuple(rope["frequency_factors"])
            rope = LLaMARoPEScaleConfig(**rope)
        config.rope_scale = rope
    return config


def save_config(config: LLaMAConfig, path: str | Path) -> None:
    """Writes the config as JSON."""
    Path(path).write_text(json.dumps(config_to_dict(config), indent=2) + "\n")


def load_config(path: str | Path) -> LLaMAConfig:
    """Reads a config written by :func:`save_config`."""
    path = Path(path)
    try:
        return config_from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as e:
        raise ValueError(f"{path}: not a valid model config ({e})") from e
