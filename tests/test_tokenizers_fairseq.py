"""fairseq HuBERT checkpoint conversion, checked against an independent re-implementation of
fairseq's forward pass (``HubertModel.extract_features(output_layer=L)``) written here from
fairseq's parameter names alone."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from spiritlm.tokenizers.fairseq_hubert import (
    FairseqCheckpointError,
    convert_state_dict,
    hf_config_from_fairseq,
    load_fairseq_hubert,
    parse_conv_layers,
)
from spiritlm.tokenizers.features import FeatureConfig, HubertBackend, conv_chain_frames, load_backend

from fixtures import random_fairseq_state_dict, small_cfg, write_checkpoint

def fairseq_reference(sd: dict, cfg: dict, wav: torch.Tensor, output_layer: int) -> torch.Tensor:
    """fairseq HuBERT ``extract_features(wav[None], mask=False, output_layer=...)`` (eval mode),
    written with torch.nn.functional from fairseq's module structure. Returns ``(frames, E)``."""
    conv = parse_conv_layers(cfg["conv_feature_layers"])
    x = wav[None, None].float()
    for i, (dim, k, s) in enumerate(conv):
        x = F.conv1d(x, sd[f"feature_extractor.conv_layers.{i}.0.weight"], sd.get(f"feature_extractor.conv_layers.{i}.0.bias"), stride=s)
        if cfg["extractor_mode"] == "default" and i == 0:
            x = F.group_norm(x, dim, sd["feature_extractor.conv_layers.0.2.weight"], sd["feature_extractor.conv_layers.0.2.bias"], eps=1e-5)
        if cfg["extractor_mode"] == "layer_norm":
            x = F.layer_norm(x.transpose(1, 2), (dim,), sd[f"feature_extractor.conv_layers.{i}.2.1.weight"], sd[f"feature_extractor.conv_layers.{i}.2.1.bias"]).transpose(1, 2)
        x = F.gelu(x)
    x = x.transpose(1, 2)
    x = F.layer_norm(x, (x.shape[-1],), sd["layer_norm.weight"], sd["layer_norm.bias"])
    x = F.linear(x, sd["post_extract_proj.weight"], sd["post_extract_proj.bias"])
    E, H, K, G = cfg["encoder_embed_dim"], cfg["encoder_attention_heads"], cfg["conv_pos"], cfg["conv_pos_groups"]
    v = sd["encoder.pos_conv.0.weight_v"]
    w = sd["encoder.pos_conv.0.weight_g"] * v / v.norm(dim=(0, 1), keepdim=True)  # weight_norm(dim=2)
    pc = F.conv1d(x.transpose(1, 2), w, sd["encoder.pos_conv.0.bias"], padding=K // 2, groups=G)
    if K % 2 == 0:
        pc = pc[:, :, :-1]  # SamePad
    x = x + F.gelu(pc).transpose(1, 2)
    lnf = cfg["layer_norm_first"]

    def ln(t, name):
        return F.layer_norm(t, (E,), sd[name + ".weight"], sd[name + ".bias"])

    if not lnf:
        x = ln(x, "encoder.layer_norm")
    for i in range(output_layer):
        p = f"encoder.layers.{i}."
        res = x
        if lnf:
            x = ln(x, p + "self_attn_layer_norm")
        T = x.shape[1]
        q = F.linear(x, sd[p + "self_attn.q_proj.weight"], sd[p + "self_attn.q_proj.bias"]) * (E // H) ** -0.5
        k = F.linear(x, sd[p + "self_attn.k_proj.weight"], sd[p + "self_attn.k_proj.bias"])
        vv = F.linear(x, sd[p + "self_attn.v_proj.weight"], sd[p + "self_attn.v_proj.bias"])
        q, k, vv = (t.reshape(1, T, H, E // H).transpose(1, 2) for t in (q, k, vv))
        a = torch.softmax(q @ k.transpose(-1, -2), -1) @ vv
        a = F.linear(a.transpose(1, 2).reshape(1, T, E), sd[p + "self_attn.out_proj.weight"], sd[p + "self_attn.out_proj.bias"])
        x = res + a
        if not lnf:
            x = ln(x, p + "self_attn_layer_norm")
        res = x
        if lnf:
            x = ln(x, p + "final_layer_norm")
        x = F.linear(F.gelu(F.linear(x, sd[p + "fc1.weight"], sd[p + "fc1.bias"])), sd[p + "fc2.weight"], sd[p + "fc2.bias"])
        x = res + x
        if not lnf:
            x = ln(x, p + "final_layer_norm")
    return x[0]


@pytest.mark.parametrize(
    "layout,cfg_kw",
    [
        ("meta", {}),
        ("fairseq", {}),
        ("fairseq", {"extractor_mode": "layer_norm", "conv_bias": True}),
        ("meta", {"layer_norm_first": True}),
    ],
)
def test_converted_features_equal_fairseq_reference(tmp_path, layout, cfg_kw):
    cfg = small_cfg(**cfg_kw)
    sd = random_fairseq_state_dict(cfg, seed=len(cfg_kw))
    path = tmp_path / "hubert.pt"
    write_checkpoint(path, cfg, sd, layout)
    rng = np.random.default_rng(0)
    wavs = [rng.standard_normal(n).astype(np.float32) * 0.1 for n in (16000, 9000, 12345)]
    top = cfg["encoder_layers"] - (1 if cfg["layer_norm_first"] else 0)
    for layer in range(1, top + 1):
        backend = load_backend(FeatureConfig(backend="fairseq-hubert", checkpoint=str(path), layer=layer))
        batched = backend.extract(wavs)
        for wav, feats in zip(wavs, batched):
            ref = fairseq_reference(sd, cfg, torch.from_numpy(wav), layer).numpy()
            assert feats.shape == ref.shape == (conv_chain_frames(len(wav)), cfg["encoder_embed_dim"])
            np.testing.assert_allclose(feats, ref, atol=2e-4, rtol=1e-4)
    # the layers really differ (layer selection is not a no-op)
    f1 = load_backend(FeatureConfig(backend="fairseq-hubert", checkpoint=str(path), layer=1)).extract(wavs[:1])[0]
    f2 = load_backend(FeatureConfig(backend="fairseq-hubert", checkpoint=str(path), layer=2)).extract(wavs[:1])[0]
    assert np.abs(f1 - f2).max() > 1e-2


def test_every_weight_mapped_exactly():
    from transformers import HubertModel

    cfg = small_cfg()
    sd = random_fairseq_state_dict(cfg)
    model = HubertModel(hf_config_from_fairseq(cfg))
    hf_sd, dropped = convert_state_dict(sd, cfg, model)
    assert sorted(dropped) == ["final_proj.bias", "final_proj.weight", "label_embs_concat"]
    assert set(hf_sd) == set(model.state_dict())
    assert len(hf_sd) + len(dropped) == len(sd)
    # values are moved, not altered
    assert torch.equal(hf_sd["encoder.layers.2.feed_forward.intermediate_dense.weight"], sd["encoder.layers.2.fc1.weight"])
    assert torch.equal(hf_sd["feature_projection.projection.bias"], sd["post_extract_proj.bias"])
    assert torch.equal(hf_sd["masked_spec_embed"], sd["mask_emb"])
    # an unknown fairseq key is an error, not silently ignored
    bad = dict(sd, **{"encoder.layers.0.extra_thing.weight": torch.zeros(1)})
    with pytest.raises(KeyError, match="extra_thing"):
        convert_state_dict(bad, cfg, model)
    # a missing one too
    missing = {k: v for k, v in sd.items() if k != "encoder.layers.1.fc2.bias"}
    with pytest.raises(KeyError, match=r"missing transformers keys .*layers\.1\.feed_forward\.output_dense\.bias"):
        convert_state_dict(missing, cfg, model)


def test_bad_checkpoints_named_in_errors(tmp_path):
    with pytest.raises(FairseqCheckpointError, match="nope.pt: file not found"):
        load_fairseq_hubert(tmp_path / "nope.pt")
    p = tmp_path / "ns.pt"
    torch.save({"args": argparse.Namespace(encoder_layers=2), "model": {}}, p)
    with pytest.raises(FairseqCheckpointError, match=r"ns\.pt: .*Namespace"):
        load_fairseq_hubert(p)
    p = tmp_path / "odd.pt"
    torch.save({"weights": {}}, p)
    with pytest.raises(FairseqCheckpointError, match="odd.pt: unknown checkpoint layout"):
        load_fairseq_hubert(p)


def test_transformers_directory_backend_matches_conversion(tmp_path):
    cfg = small_cfg()
    sd = random_fairseq_state_dict(cfg, seed=3)
    write_checkpoint(tmp_path / "h.pt", cfg, sd, "fairseq")
    load_fairseq_hubert(tmp_path / "h.pt").save_pretrained(tmp_path / "hf")
    wav = np.random.default_rng(1).standard_normal(8000).astype(np.float32) * 0.1
    a = HubertBackend.from_pretrained(tmp_path / "hf", layer=2).extract([wav])[0]
    b = fairseq_reference(sd, cfg, torch.from_numpy(wav), 2).numpy()
    np.testing.assert_allclose(a, b, atol=2e-4, rtol=1e-4)
