"""Unit HiFi-GAN model: config presets/JSON/Meta keys, lengths, code repetition, durations, padding, batching."""

from __future__ import annotations

import doctest

import pytest
import torch
import torch.nn.functional as F

from spiritlm.vocoder import config as config_mod
from spiritlm.vocoder import model as model_mod
from spiritlm.vocoder.config import VocoderConfig
from spiritlm.vocoder.model import (
    DurationPredictor,
    UnitHifiGAN,
    durations_from_log,
    expand_by_durations,
    upsample_codes,
)


def small_config(**kw) -> VocoderConfig:
    base = dict(num_pitch=8, num_style=5, num_speakers=3, embedding_dim=8, upsample_initial_channel=32,
                resblock_kernel_sizes=[3, 5], resblock_dilation_sizes=[[1, 3, 5], [1, 2, 3]], duration_hidden=16)
    base.update(kw)
    return VocoderConfig.preset("tiny", **base)


@pytest.fixture(scope="module")
def voc():
    """Untrained, with weight norms large enough for non-trivial audio (N(0, 0.01) init is near-constant)."""
    torch.manual_seed(0)
    model = UnitHifiGAN(small_config(upsample_initial_channel=64)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("original0"):
                p.uniform_(0.5, 1.5)
    return model


def test_doctests():
    for mod in (model_mod, config_mod):
        result = doctest.testmod(mod)
        assert result.attempted > 0 and result.failed == 0, mod.__name__


# -- config -------------------------------------------------------------------------------------


def test_presets_and_json_roundtrip():
    base = VocoderConfig.preset("base")
    assert base.upsample_initial_channel == 512 and base.resblock_kernel_sizes == [3, 7, 11]
    assert base.embedding_dim == 128 and base.upsample_rates == [5, 4, 4, 4, 2]
    exp = VocoderConfig.preset("expressive", num_speakers=4)
    assert (exp.num_pitch, exp.num_style, exp.pitch_ratio, exp.style_ratio) == (64, 100, 2, 25)
    assert exp.in_channels == 4 * 128
    assert VocoderConfig.from_dict(exp.to_dict()) == exp
    assert VocoderConfig.from_meta(exp.to_meta()) == exp
    meta = exp.to_meta()
    assert meta["model_in_dim"] == 512 and meta["num_f0_tokens"] == 64 and meta["f0_hop_size"] == 1280
    assert meta["dur_predictor_params"]["var_pred_kernel_size"] == 3
    with pytest.raises(ValueError, match="unknown vocoder config"):
        VocoderConfig.preset("huge")
    with pytest.raises(ValueError, match="unknown vocoder config field"):
        VocoderConfig.preset("tiny", channels=3)
    with pytest.raises(ValueError, match="multiply to"):
        VocoderConfig(upsample_rates=[5, 4, 4, 4], upsample_kernel_sizes=[11, 8, 8, 8])


def test_from_meta_defaults_and_checks():
    meta = VocoderConfig.preset("base", num_speakers=4, num_style_ids=9).to_meta()
    del meta["num_speakers"], meta["num_styles"]
    meta["model_in_dim"] = 128 * 3
    cfg = VocoderConfig.from_meta(meta)
    assert (cfg.num_speakers, cfg.num_style_ids) == (200, 100)  # Meta's loader defaults
    meta["model_in_dim"] = 100
    with pytest.raises(ValueError, match="model_in_dim"):
        VocoderConfig.from_meta(meta)


# -- tensor helpers --------------------------------------------------------------------------------


def test_upsample_codes_repeats_pads_and_cuts():
    codes = torch.tensor([[1, 2, 3], [4, 5, 6]])
    assert upsample_codes(codes, 2, 6).tolist() == [[1, 1, 2, 2, 3, 3], [4, 4, 5, 5, 6, 6]]
    assert upsample_codes(codes, 2, 8).tolist()[0] == [1, 1, 2, 2, 3, 3, 3, 3]  # padded with the last
    assert upsample_codes(codes, 2, 3).tolist()[1] == [4, 4, 5]  # cut to the unit count
    style = torch.tensor([[7, 9]])
    up = upsample_codes(style, 25, 60)[0].tolist()
    assert up == [7] * 25 + [9] * 35
    with pytest.raises(ValueError):
        upsample_codes(torch.zeros(1, 0, dtype=torch.long), 2, 4)


def test_duration_rounding():
    frames = torch.tensor([0.0, 0.4, 0.6, 1.5, 2.5, 3.0, 10.0])
    got = durations_from_log(torch.log1p(frames)).tolist()
    # round half to even, at least one frame per unit
    assert got == [1, 1, 1, 2, 2, 3, 10]
    assert durations_from_log(torch.tensor([-5.0])).tolist() == [1]


def test_expand_by_durations_batch():
    x = torch.arange(8.0).view(2, 1, 4)
    y, n = expand_by_durations(x, torch.tensor([[1, 2, 0, 1], [3, 1, 5, 5]]), torch.tensor([4, 2]))
    assert n.tolist() == [4, 4]
    assert y[0, 0].tolist() == [0, 1, 1, 3]
    assert y[1, 0].tolist() == [4, 4, 4, 5]


# -- generator ------------------------------------------------------------------------------------


def test_lengths_are_units_times_hop(voc):
    for T in (1, 2, 7, 25):
        units = torch.randint(0, 501, (2, T))
        wav = voc(units, torch.randint(0, 8, (2, (T + 1) // 2)), torch.randint(0, 5, (2, 1)))
        assert wav.shape == (2, 1, T * 640)
        assert wav.abs().max() <= 1 and wav.std() > 1e-3


def test_embedding_order_and_repetition(voc):
    units = torch.tensor([[3, 4, 5, 6, 7]])
    pitch = torch.tensor([[1, 2]])
    style = torch.tensor([[4]])
    x = voc.embed(units, pitch, style, speaker=torch.tensor([2]))
    D = 8
    assert x.shape == (1, 4 * D, 5)
    assert torch.equal(x[0, :D], voc.unit_embedding.weight[units[0]].T)
    assert torch.equal(x[0, D : 2 * D], voc.pitch_embedding.weight[torch.tensor([1, 1, 2, 2, 2])].T)
    assert torch.equal(x[0, 2 * D : 3 * D], voc.style_embedding.weight[torch.tensor([4] * 5)].T)
    assert torch.equal(x[0, 3 * D :], voc.speaker_embedding.weight[2][:, None].expand(D, 5))
    aligned = voc.embed(units, torch.tensor([[1, 1, 2, 2, 2]]), torch.tensor([[4] * 5]), torch.tensor([2]), aligned=True)
    assert torch.equal(aligned, x)
    with pytest.raises(ValueError, match="pitch"):
        voc.embed(units)


def test_zero_padding_not_reflection(voc):
    """Every convolution pads with zeros inside the kernel: conv_pre equals F.conv1d with zero padding."""
    x = torch.randn(1, voc.config.in_channels, 3)  # shorter than conv_pre's pad of 3
    w = voc.conv_pre.conv.weight
    ref = F.conv1d(x, w, voc.conv_pre.conv.bias, padding=3)
    assert torch.allclose(voc.conv_pre(x), ref, atol=1e-6)
    convs = [m for m in voc.modules() if isinstance(m, torch.nn.Conv1d)]
    assert convs and {m.padding_mode for m in convs} == {"zeros"}
    assert all(m.padding[0] == m.dilation[0] * (m.kernel_size[0] - 1) // 2 for m in voc.weight_norm_convs() if isinstance(m, torch.nn.Conv1d))


def test_masked_vocode_matches_unmasked(voc):
    x = torch.randn(1, voc.config.in_channels, 9)
    with torch.no_grad():
        full = voc.vocode(x)
        masked = voc.vocode(x, torch.tensor([9]))
    assert torch.allclose(full, masked, atol=1e-6)


def test_padded_batch_equals_one_at_a_time(voc):
    torch.manual_seed(1)
    lengths = [11, 4, 7]
    units = torch.randint(0, 501, (3, 11))
    pitch = torch.randint(0, 8, (3, 11))
    style = torch.randint(0, 5, (3, 11))
    spk = torch.tensor([0, 1, 2])
    for dur_pred in (False, True):
        wav, n = voc.infer(units, pitch, style, spk, lengths=torch.tensor(lengths), dur_pred=dur_pred)
        for b, L in enumerate(lengths):
            one, m = voc.infer(units[b : b + 1, :L], pitch[b : b + 1, :L], style[b : b + 1, :L], spk[b : b + 1], dur_pred=dur_pred)
            assert int(n[b]) == int(m[0])
            assert torch.allclose(wav[b, : n[b]], one[0], atol=1e-5), (dur_pred, b)
            assert wav[b, n[b] :].abs().max() == 0 if n[b] < wav.size(1) else True


def test_duration_predictor_path(voc):
    units = torch.tensor([[5, 9, 5, 2]])
    log_d = voc.predict_durations(units)
    frames = durations_from_log(log_d)
    wav, n = voc.infer(units, torch.zeros_like(units), torch.zeros_like(units), dur_pred=True)
    assert int(n[0]) == int(frames.sum()) * 640 == wav.size(1)
    dp = DurationPredictor(8, 16)
    assert dp(torch.randn(3, 8, 1)).shape == (3, 1)  # a single unit still works (zero padding)


def test_remove_weight_norm_keeps_audio():
    torch.manual_seed(2)
    voc = UnitHifiGAN(small_config()).eval()
    units = torch.randint(0, 501, (1, 6))
    args = (units, torch.randint(0, 8, (1, 3)), torch.randint(0, 5, (1, 1)))
    with torch.no_grad():
        before = voc(*args)
        assert voc.has_weight_norm
        voc.remove_weight_norm()
        voc.remove_weight_norm()  # idempotent
        after = voc(*args)
    assert not voc.has_weight_norm
    assert torch.allclose(before, after, atol=1e-6)


def test_gradients_flow_for_training():
    voc = UnitHifiGAN(small_config(num_pitch=0, num_style=0)).train()
    units = torch.randint(0, 501, (2, 4))
    wav = voc(units, speaker=torch.tensor([0, 1]))
    loss = wav.pow(2).mean() + voc.predict_durations(units).pow(2).mean()
    loss.backward()
    assert voc.unit_embedding.weight.grad is not None and voc.unit_embedding.weight.grad.abs().sum() > 0
    assert voc.duration_predictor.proj.weight.grad.abs().sum() > 0
    assert voc.conv_pre.conv.parametrizations.weight.original1.grad.abs().sum() > 0
