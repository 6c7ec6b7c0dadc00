"""Meta's vocoder layout: same audio as an independent plain-PyTorch reference of Meta's generator, exact round trips.

The reference below is written from the published facts of Meta's CodeHiFiGAN generator
(embeddings, f0/style repetition with last-value padding, weight-norm convs with zero padding,
LeakyReLU 0.1, resblock sums divided by their number, final LeakyReLU 0.01, conv_post, tanh;
duration predictor conv-ReLU-LayerNorm twice then a projection, clamp(round(exp(x) - 1), 1)).
It reads the checkpoint by Meta's tensor names and shares no code with ``spiritlm.vocoder``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from spiritlm.errors import UserError
from spiritlm.formats import string_to_units
from spiritlm.vocoder import Vocoder
from spiritlm.vocoder.meta import export_meta, load_meta

D = 8  # embedding dim
CH = 32  # upsample_initial_channel
RATES, KERNELS = [5, 4, 4, 4, 2], [11, 8, 8, 8, 4]
RES_K, RES_D = [3, 5], [[1, 3, 5], [1, 2, 3]]
H = 12  # duration predictor hidden


def meta_config(expressive: bool) -> dict:
    n_streams = 4 if expressive else 3  # units, (pitch, style,) speaker, (style id)
    cfg = {
        "resblock": "1", "learning_rate": 0.0002, "segment_size": 8960,  # training keys are ignored
        "upsample_rates": RATES, "upsample_kernel_sizes": KERNELS, "upsample_initial_channel": CH,
        "resblock_kernel_sizes": RES_K, "resblock_dilation_sizes": RES_D,
        "num_embeddings": 50, "embedding_dim": D, "model_in_dim": D * n_streams, "code_hop_size": 640,
        "multispkr": "from_input_file", "num_speakers": 3, "sampling_rate": 16000,
        "dur_predictor_params": {"encoder_embed_dim": D, "var_pred_hidden_dim": H, "var_pred_kernel_size": 3, "var_pred_dropout": 0.5},
    }
    if expressive:
        cfg.update(num_f0_tokens=16, f0_hop_size=1280, num_style_tokens=10, style_hop_size=16000, multistyle=None)
    else:
        cfg.update(multistyle=True, num_styles=4)
    return cfg


def random_meta_state(cfg: dict, seed: int) -> dict:
    """A Meta-layout generator state dict built by hand from the config (weight-norm g/v)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return torch.randn(*shape, generator=g) * scale

    sd = {}

    def wn_conv(name, out_ch, in_ch, k, transpose=False):
        shape = (in_ch, out_ch, k) if transpose else (out_ch, in_ch, k)
        sd[f"{name}.weight_v"] = rnd(*shape)
        sd[f"{name}.weight_g"] = torch.rand(shape[0], 1, 1, generator=g) * 0.6 + 0.2
        sd[f"{name}.bias"] = rnd(out_ch, scale=0.05)

    sd["dict.weight"] = rnd(cfg["num_embeddings"], D)
    if cfg.get("num_f0_tokens"):
        sd["f0_dict.weight"] = rnd(cfg["num_f0_tokens"], D)
        sd["style_dict.weight"] = rnd(cfg["num_style_tokens"], D)
    sd["spkr.weight"] = rnd(cfg["num_speakers"], D)
    if cfg.get("multistyle"):
        sd["style.weight"] = rnd(cfg["num_styles"], D)
    sd["dur_predictor.conv1.0.weight"] = rnd(H, D, 3, scale=0.3)
    sd["dur_predictor.conv1.0.bias"] = rnd(H, scale=0.1)
    sd["dur_predictor.ln1.weight"] = 1 + rnd(H, scale=0.1)
    sd["dur_predictor.ln1.bias"] = rnd(H, scale=0.1)
    sd["dur_predictor.conv2.0.weight"] = rnd(H, H, 3, scale=0.3)
    sd["dur_predictor.conv2.0.bias"] = rnd(H, scale=0.1)
    sd["dur_predictor.ln2.weight"] = 1 + rnd(H, scale=0.1)
    sd["dur_predictor.ln2.bias"] = rnd(H, scale=0.1)
    sd["dur_predictor.proj.weight"] = rnd(1, H, scale=0.3)
    sd["dur_predictor.proj.bias"] = torch.tensor([1.2])  # about 2-3 frames per unit
    wn_conv("conv_pre", CH, cfg["model_in_dim"], 7)
    ch = CH
    for i, k in enumerate(KERNELS):
        wn_conv(f"ups.{i}", ch // 2, ch, k, transpose=True)
        ch //= 2
        for j, (rk, _) in enumerate(zip(RES_K, RES_D)):
            for m in range(3):
                wn_conv(f"resblocks.{i * len(RES_K) + j}.convs1.{m}", ch, ch, rk)
                wn_conv(f"resblocks.{i * len(RES_K) + j}.convs2.{m}", ch, ch, rk)
    wn_conv("conv_post", 1, ch, 7)
    return sd


# -- the independent reference ----------------------------------------------------------------


def _w(sd, name):
    v, g = sd[f"{name}.weight_v"], sd[f"{name}.weight_g"]
    norm = v.reshape(v.shape[0], -1).norm(dim=1).reshape(-1, *[1] * (v.dim() - 1))
    return g * v / norm


def _repeat_to(codes, ratio, n):
    up = [c for c in codes for _ in range(ratio)]
    up = up + [up[-1]] * max(0, n - len(up))
    return up[:n]


def reference_meta_vocoder(sd, cfg, code, f0_code=None, style_code=None, spkr=0, style_id=0, dur_pred=False):
    code_t = torch.tensor([code])
    x = sd["dict.weight"][code_t].transpose(1, 2)  # 1, D, T
    dur = None
    if dur_pred:
        h = F.conv1d(x, sd["dur_predictor.conv1.0.weight"], sd["dur_predictor.conv1.0.bias"], padding=1).relu()
        h = F.layer_norm(h.transpose(1, 2), (H,), sd["dur_predictor.ln1.weight"], sd["dur_predictor.ln1.bias"])
        h = F.conv1d(h.transpose(1, 2), sd["dur_predictor.conv2.0.weight"], sd["dur_predictor.conv2.0.bias"], padding=1).relu()
        h = F.layer_norm(h.transpose(1, 2), (H,), sd["dur_predictor.ln2.weight"], sd["dur_predictor.ln2.bias"])
        log_dur = (h @ sd["dur_predictor.proj.weight"].T + sd["dur_predictor.proj.bias"])[..., 0]
        dur = torch.clamp(torch.round(torch.exp(log_dur) - 1).long(), min=1).view(-1)
        x = x.repeat_interleave(dur, dim=2)
    feats = [x]
    for key, table, codes, hop in (("f0", "f0_dict", f0_code, "f0_hop_size"), ("style", "style_dict", style_code, "style_hop_size")):
        if codes is None:
            continue
        if not dur_pred:
            codes = _repeat_to(codes, round(cfg[hop] / cfg["code_hop_size"]), len(code))
        e = sd[f"{table}.weight"][torch.tensor([codes])].transpose(1, 2)
        if dur is not None:
            e = e.repeat_interleave(dur, dim=2)
        feats.append(e)
    T = x.shape[-1]
    feats.append(sd["spkr.weight"][spkr].view(1, D, 1).expand(1, D, T))
    if cfg.get("multistyle"):
        feats.append(sd["style.weight"][style_id].view(1, D, 1).expand(1, D, T))
    x = torch.cat(feats, dim=1)

    x = F.conv1d(x, _w(sd, "conv_pre"), sd["conv_pre.bias"], padding=3)
    nk = len(RES_K)
    for i, (u, k) in enumerate(zip(RATES, KERNELS)):
        x = F.leaky_relu(x, 0.1)
        x = F.conv_transpose1d(x, _w(sd, f"ups.{i}"), sd[f"ups.{i}.bias"], stride=u, padding=(k - u) // 2)
        total = 0
        for j, (rk, dils) in enumerate(zip(RES_K, RES_D)):
            name = f"resblocks.{i * nk + j}"
            y = x
            for m, d in enumerate(dils):
                t = F.conv1d(F.leaky_relu(y, 0.1), _w(sd, f"{name}.convs1.{m}"), sd[f"{name}.convs1.{m}.bias"], dilation=d, padding=d * (rk - 1) // 2)
                t = F.conv1d(F.leaky_relu(t, 0.1), _w(sd, f"{name}.convs2.{m}"), sd[f"{name}.convs2.{m}.bias"], padding=(rk - 1) // 2)
                y = y + t
            total = total + y
        x = total / nk
    x = F.conv1d(F.leaky_relu(x, 0.01), _w(sd, "conv_post"), sd["conv_post.bias"], padding=3)
    return torch.tanh(x).reshape(-1).numpy()


# -- fixtures -------------------------------------------------------------------------------------


def write_meta_dir(path, expressive: bool, seed: int = 0):
    cfg = meta_config(expressive)
    sd = random_meta_state(cfg, seed)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(cfg))
    torch.save({"generator": sd}, path / "generator.pt")
    (path / "speakers.txt").write_text("ex01\nex02\nex03\n")
    if not expressive:
        (path / "styles.txt").write_text("default\nhappy\nsad\nwhisper\n")
    return cfg, sd


@pytest.fixture(scope="module")
def expressive(tmp_path_factory):
    d = tmp_path_factory.mktemp("meta_expressive")
    cfg, sd = write_meta_dir(d, expressive=True, seed=1)
    return d, cfg, sd


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    d = tmp_path_factory.mktemp("meta_base")
    cfg, sd = write_meta_dir(d, expressive=False, seed=2)
    return d, cfg, sd


# -- fidelity -----------------------------------------------------------------------------------


def test_frame_rate_units_match_reference(expressive):
    d, cfg, sd = expressive
    voc = Vocoder.from_pretrained(d)
    rng = np.random.default_rng(0)
    hubert = rng.integers(0, 50, 37).tolist()  # 1.48 s: 19 pitch codes, 2 style codes
    pitch = rng.integers(0, 16, 18).tolist()  # one short: padded with the last code
    style = [3, 7]
    units = {"hubert": " ".join(map(str, hubert)), "pitch": " ".join(map(str, pitch)), "style": " ".join(map(str, style))}
    ours = voc.synthesize(units, speaker="ex02")
    ref = reference_meta_vocoder(sd, cfg, hubert, pitch, style, spkr=1)
    assert ours.shape == ref.shape == (37 * 640,)
    assert ours.dtype == np.float32
    assert np.abs(ours).max() > 1e-3  # not silence
    np.testing.assert_allclose(ours, ref, atol=2e-5)


def test_token_string_with_duration_prediction_matches_reference(expressive):
    d, cfg, sd = expressive
    voc = Vocoder.from_pretrained(d)
    s = "[St3][Pi1][Hu5][Hu7][Pi4][Hu9][Hu2][St8][Hu11][Pi15][Hu5][Hu40][Hu7]"
    u = string_to_units(s)
    code = [int(x) for x in u["hubert"].split()]
    ref = reference_meta_vocoder(sd, cfg, code, [int(x) for x in u["pitch"].split()], [int(x) for x in u["style"].split()],
                                 spkr=0, dur_pred=True)
    ours = voc.synthesize(s)  # dur_pred defaults to True for strings
    assert ours.shape == ref.shape and ours.size > len(code) * 640  # durations > 1 frame were predicted
    np.testing.assert_allclose(ours, ref, atol=2e-5)
    # without duration prediction every token gets one frame
    assert voc.synthesize(s, dur_pred=False).size == len(code) * 640


def test_base_layout_with_style_id_matches_reference(base):
    d, cfg, sd = base
    voc = Vocoder.from_pretrained(d / "generator.pt")  # the checkpoint path works too
    code = [3, 3, 3, 9, 9, 1, 0, 49, 49, 12]
    ours = voc.synthesize({"hubert": " ".join(map(str, code)), "pitch": "1 2 3 4 5"}, speaker=2, style_id="sad")
    ref = reference_meta_vocoder(sd, cfg, code, spkr=2, style_id=2)  # base vocoders ignore pitch
    np.testing.assert_allclose(ours, ref, atol=2e-5)
    s = "[Hu3][Hu9][Hu1][Hu0][Hu49][Hu12]"
    ref = reference_meta_vocoder(sd, cfg, [3, 9, 1, 0, 49, 12], spkr=0, style_id=1, dur_pred=True)
    np.testing.assert_allclose(voc.synthesize(s, style_id=1), ref, atol=2e-5)


def test_weight_norm_kept_gives_same_audio(expressive):
    d, _, _ = expressive
    units = {"hubert": "1 2 3 4 5 6", "pitch": "1 2 3", "style": "4"}
    folded = Vocoder.from_pretrained(d).synthesize(units)
    kept = Vocoder.from_pretrained(d, fold_weight_norm=False)
    assert kept.model.has_weight_norm
    np.testing.assert_allclose(kept.synthesize(units), folded, atol=1e-5)


# -- round trips ------------------------------------------------------------------------------------


def test_meta_load_export_roundtrip_is_exact(expressive, tmp_path):
    d, cfg, sd = expressive
    model, speakers, styles = load_meta(d)
    export_meta(model, tmp_path / "out", speakers, styles)
    back = torch.load(tmp_path / "out" / "generator.pt", weights_only=True)["generator"]
    assert set(back) == set(sd)
    for k in sd:
        assert torch.equal(back[k], sd[k]), k
    exported_cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    for key in ("num_embeddings", "embedding_dim", "num_f0_tokens", "f0_hop_size", "code_hop_size", "num_style_tokens",
                "style_hop_size", "num_speakers", "model_in_dim", "upsample_rates", "upsample_kernel_sizes",
                "upsample_initial_channel", "resblock_kernel_sizes", "resblock_dilation_sizes", "dur_predictor_params",
                "sampling_rate"):
        assert exported_cfg[key] == cfg[key], key
    assert (tmp_path / "out" / "speakers.txt").read_text() == "ex01\nex02\nex03\n"


def test_ours_save_load_and_folded_export(expressive, tmp_path):
    d, cfg, sd = expressive
    voc = Vocoder.from_pretrained(d)  # folded
    units = {"hubert": "4 4 8 15 16 23 42", "pitch": "3 1 4 1", "style": "5"}
    ref = voc.synthesize(units, speaker=1)
    voc.save(tmp_path / "ours")
    again = Vocoder.from_pretrained(tmp_path / "ours")
    assert again.speakers == ["ex01", "ex02", "ex03"]
    for k, v in voc.model.state_dict().items():
        assert torch.equal(again.model.state_dict()[k], v), k
    np.testing.assert_array_equal(again.synthesize(units, speaker="ex02"), ref)
    # a folded model exported to Meta's layout gives the same audio through the reference
    again.export_meta(tmp_path / "meta")
    back = torch.load(tmp_path / "meta" / "generator.pt", weights_only=True)["generator"]
    assert set(back) == set(sd)
    h = [int(x) for x in units["hubert"].split()]
    out = reference_meta_vocoder(back, cfg, h, [3, 1, 4, 1], [5], spkr=1)
    np.testing.assert_allclose(out, ref, atol=2e-5)


def test_unweighted_checkpoint_and_bad_files(expressive, tmp_path):
    d, cfg, sd = expressive
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps(cfg))
    torch.save({"generator": {**sd, "mystery.weight": torch.zeros(2)}}, bad / "generator.pt")
    with pytest.raises(UserError, match="mystery.weight"):
        Vocoder.from_pretrained(bad)
    torch.save({"generator": {k: v for k, v in sd.items() if k != "conv_post.bias"}}, bad / "generator.pt")
    with pytest.raises(UserError, match="conv_post"):
        Vocoder.from_pretrained(bad)
    torch.save({"weights": {}}, bad / "generator.pt")
    with pytest.raises(UserError, match="generator"):
        Vocoder.from_pretrained(bad)
    with pytest.raises(UserError, match="not found"):
        Vocoder.from_pretrained(tmp_path / "nowhere")


def test_reflection_padding_would_differ_at_the_edges(expressive):
    """Why our generator pads with zeros: speechbrain's stock HifiganGenerator (reflection padding),
    loaded with the same weights, changes the first and last frames of Meta's audio."""
    from speechbrain.lobes.models.HifiGAN import HifiganGenerator

    d, cfg, sd = expressive
    voc = Vocoder.from_pretrained(d, fold_weight_norm=False)
    c = voc.config
    stock = HifiganGenerator(c.in_channels, 1, "1", c.resblock_dilation_sizes, c.resblock_kernel_sizes, c.upsample_kernel_sizes,
                             c.upsample_initial_channel, c.upsample_rates, inference_padding=0).eval()
    gen_keys = {k: v for k, v in voc.model.state_dict().items() if k.startswith(("conv_pre.", "ups.", "resblocks.", "conv_post."))}
    stock.load_state_dict(gen_keys, strict=True)  # the same tensor names
    hubert = list(range(1, 33))
    pitch = [i % 16 for i in range(16)]
    ref = reference_meta_vocoder(sd, cfg, hubert, pitch, [2, 5])
    x = voc.model.embed(torch.tensor([hubert]), torch.tensor([pitch]), torch.tensor([[2, 5]]), torch.tensor([0]))
    with torch.no_grad():
        diff = np.abs(stock(x).reshape(-1).numpy() - ref)
    assert diff[:640].max() > 1e-2 and diff[-640:].max() > 1e-2  # first / last 40 ms
    assert diff[4 * 640 : -4 * 640].max() < 1e-3  # the middle barely changes
