"""fairseq HuBERT checkpoints -> transformers ``HubertModel``.

Two file layouts are read, both holding fairseq's module names:

* Meta's released ``mhubert_base_25hz.pt``: ``{"model_cfg": {...}, "task_cfg": {...},
  "model_weight": state_dict, "dictionaries_symbols": [...]}``;
* fairseq's own: ``{"cfg": {"model": {...}, "task": {...}, ...}, "model": state_dict}``.

Files are read with ``torch.load(weights_only=True)``: plain dicts, lists, numbers, strings and
tensors only. Checkpoints whose configs are pickled ``argparse.Namespace`` or omegaconf objects
are refused with a message saying how to re-save them as plain dicts.

The converted model gives, at layer ``L``, the features fairseq's
``HubertModel.extract_features(source, padding_mask, mask=False, output_layer=L)`` gives.
"""

from __future__ import annotations

import ast
import os
import pickle
import re
from typing import Any

import torch

#: fairseq-only weights that play no part in feature extraction (training heads).
TRAINING_ONLY = ("label_embs_concat", "final_proj.weight", "final_proj.bias")

DEFAULT_CONV = "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2"


class FairseqCheckpointError(ValueError):
    """A fairseq checkpoint that cannot be read or converted; the message names the file."""


def load_fairseq_checkpoint(path: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """Reads a fairseq HuBERT checkpoint in either layout.

    Returns:
        ``(model_cfg, state_dict)`` with fairseq's parameter names.

    Raises:
        FairseqCheckpointError: missing file, pickled non-primitive objects, unknown layout.
    """
    path = str(path)
    if not os.path.isfile(path):
        raise FairseqCheckpointError(f"{path}: file not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise FairseqCheckpointError(
            f"{path}: the checkpoint pickles objects other than dicts/tensors (e.g. an argparse "
            "Namespace or omegaconf config), which are not loaded for safety. Re-save it with "
            "plain dicts, e.g. in an environment with fairseq: ckpt['cfg'] = "
            "omegaconf.OmegaConf.to_container(ckpt['cfg']) (or vars(ckpt['args'])) and "
            f"torch.save(ckpt, ...). Loader said: {str(exc).splitlines()[0]}"
        ) from None
    except Exception as exc:
        raise FairseqCheckpointError(f"{path}: not a readable torch checkpoint ({exc})") from None
    if not isinstance(ckpt, dict):
        raise FairseqCheckpointError(f"{path}: expected a dict checkpoint, got {type(ckpt).__name__}")
    if "model_weight" in ckpt and "model_cfg" in ckpt:
        cfg, sd = ckpt["model_cfg"], ckpt["model_weight"]
    elif "cfg" in ckpt and "model" in ckpt:
        cfg = ckpt["cfg"]
        if not isinstance(cfg, dict) or "model" not in cfg:
            raise FairseqCheckpointError(f"{path}: 'cfg' has no 'model' section")
        cfg, sd = cfg["model"], ckpt["model"]
    elif "args" in ckpt and "model" in ckpt:
        raise FairseqCheckpointError(
            f"{path}: old fairseq layout with 'args' (argparse) is not supported; convert its "
            "args to a dict under cfg['model']"
        )
    else:
        raise FairseqCheckpointError(
            f"{path}: unknown checkpoint layout (keys {sorted(ckpt)[:8]}); expected "
            "model_cfg/model_weight (Meta) or cfg/model (fairseq)"
        )
    if not isinstance(cfg, dict):
        raise FairseqCheckpointError(f"{path}: model config is a {type(cfg).__name__}, expected a dict")
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise FairseqCheckpointError(f"{path}: model weights are not a dict of tensors")
    return cfg, sd


def parse_conv_layers(spec: str) -> list[tuple[int, int, int]]:
    """Evaluates fairseq's ``conv_feature_layers`` string (lists of ``(dim, kernel, stride)``
    tuples joined with ``+`` and repeated with ``*``) without ``eval``."""

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, (ast.List, ast.Tuple)):
            vals = [ev(e) for e in node.elts]
            return vals if isinstance(node, ast.List) else tuple(vals)
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            a, b = ev(node.left), ev(node.right)
            return a + b if isinstance(node.op, ast.Add) else a * b
        raise ValueError(f"unsupported expression in conv_feature_layers: {spec!r}")

    layers = ev(ast.parse(spec, mode="eval"))
    if not isinstance(layers, list) or not all(isinstance(t, tuple) and len(t) == 3 for t in layers):
        raise ValueError(f"conv_feature_layers must be a list of (dim, kernel, stride): {spec!r}")
    return layers


def hf_config_from_fairseq(cfg: dict[str, Any]):
    """fairseq HuBERT model config (dict) -> ``transformers.HubertConfig`` (dropouts off)."""
    from transformers import HubertConfig

    conv = parse_conv_layers(cfg.get("conv_feature_layers") or DEFAULT_CONV)
    mode = cfg.get("extractor_mode", "default")
    if mode not in ("default", "layer_norm"):
        raise ValueError(f"unknown extractor_mode {mode!r}")
    act = cfg.get("activation_fn", "gelu")
    if act not in ("gelu", "relu"):
        raise ValueError(f"unsupported activation_fn {act!r}")
    return HubertConfig(
        hidden_size=int(cfg.get("encoder_embed_dim", 768)),
        num_hidden_layers=int(cfg.get("encoder_layers", 12)),
        num_attention_heads=int(cfg.get("encoder_attention_heads", 12)),
        intermediate_size=int(cfg.get("encoder_ffn_embed_dim", 3072)),
        hidden_act=act,
        feat_extract_norm="group" if mode == "default" else "layer",
        feat_extract_activation="gelu",
        conv_dim=[c[0] for c in conv],
        conv_kernel=[c[1] for c in conv],
        conv_stride=[c[2] for c in conv],
        conv_bias=bool(cfg.get("conv_bias", False)),
        num_conv_pos_embeddings=int(cfg.get("conv_pos", 128)),
        num_conv_pos_embedding_groups=int(cfg.get("conv_pos_groups", 16)),
        do_stable_layer_norm=bool(cfg.get("layer_norm_first", False)),
        feat_proj_layer_norm=True,
        layer_norm_eps=1e-5,
        hidden_dropout=0.0, activation_dropout=0.0, attention_dropout=0.0,
        feat_proj_dropout=0.0, final_dropout=0.0, layerdrop=0.0,
        mask_time_prob=0.05,
    )


def _map_key(k: str, mode: str, weight_norm_names: tuple[str, str]) -> str | None:
    """fairseq parameter name -> transformers HubertModel name (None: training-only)."""
    if k in TRAINING_ONLY:
        return None
    m = re.fullmatch(r"feature_extractor\.conv_layers\.(\d+)\.(.+)", k)
    if m:
        i, rest = m.groups()
        if rest == "0.weight" or rest == "0.bias":
            return f"feature_extractor.conv_layers.{i}.conv.{rest[2:]}"
        if mode == "default" and i == "0" and rest in ("2.weight", "2.bias"):
            return f"feature_extractor.conv_layers.0.layer_norm.{rest[2:]}"
        if mode == "layer_norm" and rest in ("2.1.weight", "2.1.bias"):
            return f"feature_extractor.conv_layers.{i}.layer_norm.{rest[4:]}"
        raise KeyError(k)
    simple = {
        "layer_norm.weight": "feature_projection.layer_norm.weight",
        "layer_norm.bias": "feature_projection.layer_norm.bias",
        "post_extract_proj.weight": "feature_projection.projection.weight",
        "post_extract_proj.bias": "feature_projection.projection.bias",
        "mask_emb": "masked_spec_embed",
        "encoder.layer_norm.weight": "encoder.layer_norm.weight",
        "encoder.layer_norm.bias": "encoder.layer_norm.bias",
        "encoder.pos_conv.0.bias": "encoder.pos_conv_embed.conv.bias",
        "encoder.pos_conv.0.weight_g": f"encoder.pos_conv_embed.conv.{weight_norm_names[0]}",
        "encoder.pos_conv.0.weight_v": f"encoder.pos_conv_embed.conv.{weight_norm_names[1]}",
    }
    if k in simple:
        return simple[k]
    m = re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)", k)
    if m:
        i, rest = m.groups()
        sub = {
            "self_attn.k_proj": "attention.k_proj",
            "self_attn.q_proj": "attention.q_proj",
            "self_attn.v_proj": "attention.v_proj",
            "self_attn.out_proj": "attention.out_proj",
            "self_attn_layer_norm": "layer_norm",
            "fc1": "feed_forward.intermediate_dense",
            "fc2": "feed_forward.output_dense",
            "final_layer_norm": "final_layer_norm",
        }
        mod, _, param = rest.rpartition(".")
        if mod in sub and param in ("weight", "bias"):
            return f"encoder.layers.{i}.{sub[mod]}.{param}"
    raise KeyError(k)


def convert_state_dict(sd: dict[str, torch.Tensor], model_cfg: dict, hf_model) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Renames a fairseq state dict for ``hf_model``.

    Returns:
        ``(hf_state_dict, dropped)``: the renamed tensors (covering every parameter and
        persistent buffer of ``hf_model``) and the fairseq keys left out (training heads only).

    Raises:
        KeyError: a fairseq key with no counterpart, a missing transformers key, or a shape
            mismatch (the message lists them).
    """
    target = hf_model.state_dict()
    if "encoder.pos_conv_embed.conv.parametrizations.weight.original0" in target:
        wn = ("parametrizations.weight.original0", "parametrizations.weight.original1")
    else:
        wn = ("weight_g", "weight_v")
    mode = model_cfg.get("extractor_mode", "default")
    out: dict[str, torch.Tensor] = {}
    dropped, unknown = [], []
    for k, v in sd.items():
        try:
            new = _map_key(k, mode, wn)
        except KeyError:
            unknown.append(k)
            continue
        if new is None:
            dropped.append(k)
            continue
        out[new] = v
    missing = sorted(set(target) - set(out))
    extra = sorted(set(out) - set(target))
    bad_shape = [f"{k}: {tuple(out[k].shape)} vs {tuple(target[k].shape)}" for k in out if k in target and out[k].shape != target[k].shape]
    if unknown or missing or extra or bad_shape:
        raise KeyError(
            "fairseq -> transformers HuBERT conversion failed: "
            f"unknown fairseq keys {unknown[:10]}, missing transformers keys {missing[:10]}, "
            f"unexpected {extra[:10]}, shape mismatches {bad_shape[:10]}"
        )
    return out, dropped


def load_fairseq_hubert(path: str | os.PathLike):
    """Loads a fairseq HuBERT checkpoint file as an eval-mode transformers ``HubertModel``."""
    from transformers import HubertModel

    cfg, sd = load_fairseq_checkpoint(path)
    try:
        config = hf_config_from_fairseq(cfg)
        model = HubertModel(config)
        hf_sd, _ = convert_state_dict(sd, cfg, model)
    except (KeyError, ValueError) as exc:
        raise FairseqCheckpointError(f"{path}: {exc}") from None
    model.load_state_dict(hf_sd, strict=True)
    return model.eval()


def convert_to_transformers(path: str | os.PathLike, out_dir: str | os.PathLike) -> None:
    """Converts a fairseq checkpoint into a transformers directory (``save_pretrained``)."""
    load_fairseq_hubert(path).save_pretrained(str(out_dir))
