"""The fairseq2 LLaMA: presets, vocabulary extension, checkpoints, Hugging Face interop."""

from __future__ import annotations

import json

import pytest
import torch
from fairseq2.nn import BatchLayout

from spiritlm.model import (
    create_model,
    extend_vocabulary,
    load_any_model,
    load_hf_model,
    load_model,
    model_config,
    num_parameters,
    save_hf_model,
    save_model,
)
from spiritlm.model.config import config_from_dict, config_to_dict
from fixtures import tiny_hf_llama


def logits_of(model, ids):
    model.eval()
    with torch.no_grad():
        return model(ids, BatchLayout.of(ids))


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return tiny_hf_llama(tmp_path_factory.mktemp("hf"), vocab_size=320, rope_theta=1e5, seed=3)


def test_hf_import_matches_transformers(hf_dir):
    from transformers import LlamaForCausalLM

    hf = LlamaForCausalLM.from_pretrained(hf_dir).eval()
    model, config = load_hf_model(hf_dir)
    assert config.rope_theta == 1e5 and config.num_key_value_heads == 2 and config.vocab_size == 320
    ids = torch.randint(0, 320, (2, 37), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = hf(ids).logits
    ours = logits_of(model, ids)
    scale = ref.abs().max()
    assert torch.allclose(ours, ref, atol=1e-5 * scale, rtol=0), (ours - ref).abs().max()


def test_import_without_rotary_permutation_disagrees(hf_dir):
    """Guards the test above: a wrong q/k layout must be detected."""
    from transformers import LlamaForCausalLM

    hf = LlamaForCausalLM.from_pretrained(hf_dir).eval()
    model, _ = load_hf_model(hf_dir)
    with torch.no_grad():
        q = model.decoder.layers[0].self_attn.q_proj.weight
        q.copy_(hf.model.layers[0].self_attn.q_proj.weight)  # HF layout, not permuted
    ids = torch.randint(0, 320, (1, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(ids).logits
    assert not torch.allclose(logits_of(model, ids), ref, atol=1e-3)


def test_export_import_roundtrip_is_lossless(hf_dir, tmp_path):
    from transformers import LlamaForCausalLM

    model, config = load_hf_model(hf_dir)
    out = save_hf_model(model, config, tmp_path / "export")
    # transformers loads the export and computes the same logits
    hf = LlamaForCausalLM.from_pretrained(out).eval()
    ids = torch.randint(0, 320, (1, 25), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(hf(ids).logits, LlamaForCausalLM.from_pretrained(hf_dir).eval()(ids).logits)
    # and re-importing gives bit-identical fairseq2 weights
    again, config2 = load_hf_model(out)
    assert config_to_dict(config2) == config_to_dict(config)
    a, b = model.state_dict(), again.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["intermediate_size"] == 96 and cfg["rope_theta"] == 1e5 and cfg["num_key_value_heads"] == 2


def test_fairseq2_model_exports_to_hf_logits(tmp_path):
    """A model created here (tiny preset shape) -> HF export -> transformers logits agree."""
    from transformers import LlamaForCausalLM

    config = model_config("tiny", model_dim=64, num_layers=2, num_attn_heads=4, num_key_value_heads=2,
                          ffn_inner_dim=80, vocab_size=150, max_seq_len=64, rope_theta=1e5)
    model = create_model(config, seed=0)
    out = save_hf_model(model, config, tmp_path / "hf")
    hf = LlamaForCausalLM.from_pretrained(out).eval()
    ids = torch.randint(0, 150, (2, 30), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = hf(ids).logits
    ours = logits_of(model, ids)
    assert torch.allclose(ours, ref, atol=1e-5, rtol=1e-4)


def test_save_load_roundtrip_and_any_loader(tmp_path):
    config = model_config("tiny", num_layers=1, vocab_size=100)
    model = create_model(config, seed=1)
    save_model(model, config, tmp_path / "ckpt")
    loaded, config2 = load_model(tmp_path / "ckpt")
    assert config_to_dict(config2) == config_to_dict(config)
    ids = torch.arange(10).unsqueeze(0)
    assert torch.equal(logits_of(model, ids), logits_of(loaded, ids))
    m3, _, tok = load_any_model(tmp_path / "ckpt")
    assert tok is None and torch.equal(logits_of(m3, ids), logits_of(model, ids))


def test_seeded_init_is_reproducible():
    config = model_config("tiny", num_layers=1, vocab_size=50)
    a, b = create_model(config, seed=7), create_model(config, seed=7)
    c = create_model(config, seed=8)
    for (k, x), y, z in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(x, y), k
    assert not torch.equal(a.state_dict()["decoder_frontend.embed.weight"], c.state_dict()["decoder_frontend.embed.weight"])


def test_extend_vocabulary_mean_plus_noise():
    config = model_config("tiny", num_layers=1, vocab_size=60)
    model = create_model(config, seed=0)
    ext, cfg2 = extend_vocabulary(model, config, 100, noise_std=0.0)
    assert cfg2.vocab_size == 100 and config.vocab_size == 60
    for key in ("decoder_frontend.embed.weight", "final_proj.weight"):
        old, new = model.state_dict()[key], ext.state_dict()[key]
        assert new.shape == (100, old.shape[1])
        assert torch.equal(new[:60], old)
        assert torch.allclose(new[60:], old.mean(0).expand(40, -1), atol=1e-6)
    noisy, _ = extend_vocabulary(model, config, 100, noise_std=0.1, seed=0)
    w, old = noisy.state_dict()["decoder_frontend.embed.weight"], model.state_dict()["decoder_frontend.embed.weight"]
    dev = (w[60:] - old.mean(0)).std(0) / old.std(0)
    assert 0.05 < float(dev.mean()) < 0.2  # relative noise ~0.1
    assert not torch.equal(w[60], w[61])
    # the old tokens' logits on old-token inputs are unchanged
    ids = torch.arange(20).unsqueeze(0)
    assert torch.allclose(logits_of(noisy, ids)[..., :60], logits_of(model, ids), atol=1e-6)


def test_presets_match_the_paper():
    def count(name):
        cfg = model_config(name)
        with torch.device("meta"):
            from fairseq2.models.llama import create_llama_model

            return num_parameters(create_llama_model(cfg)), cfg

    n, cfg = count("llama2-7b-base")
    assert cfg.vocab_size == 32512 and cfg.rope_theta == 1e5 and cfg.max_seq_len == 4096
    assert 6.7e9 < n < 6.8e9  # LLaMA-2 7B (6.74 B) + 2 x 512 x 4096 new rows
    assert count("llama2-7b-expressive")[1].vocab_size == 32768
    assert count("llama2-7b")[1].rope_theta == 1e4
    tiny = model_config("tiny", vocab_size=1000)
    assert 2e6 < num_parameters(create_model(tiny)) < 6e6
    assert config_to_dict(config_from_dict(config_to_dict(cfg))) == config_to_dict(cfg)
    with pytest.raises(ValueError, match="unknown model preset"):
        model_config("gpt")


def test_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_hf_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8, "num_attention_heads": 2,
                                                      "num_hidden_layers": 1, "intermediate_size": 8, "vocab_size": 10,
                                                      "hidden_act": "gelu"}))
    with pytest.raises(ValueError, match="hidden_act"):
        load_hf_model(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a model directory"):
        load_any_model(tmp_path / "..")


def test_meta_layout_sharded_bin_checkpoint(hf_dir, tmp_path):
    """Meta's spirit-lm-base-7b ships pytorch_model-0000k-of-00002.bin + index: read with weights_only."""
    from transformers import LlamaForCausalLM

    hf = LlamaForCausalLM.from_pretrained(hf_dir)
    hf.save_pretrained(tmp_path / "meta", safe_serialization=False, max_shard_size="100KB")
    assert (tmp_path / "meta" / "pytorch_model.bin.index.json").is_file()
    assert len(list((tmp_path / "meta").glob("pytorch_model-*.bin"))) >= 2
    a, _ = load_hf_model(tmp_path / "meta")
    b, _ = load_hf_model(hf_dir)
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), k
