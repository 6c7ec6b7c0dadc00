"""Silence and DC of the vocoder (issue 17 item 6): the silence / DC loss terms, the untrained
output's DC, and a short training on a corpus with pauses, with and without the terms."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from spiritlm.vocoder.config import VocoderConfig
from spiritlm.vocoder.losses import SILENCE_FRAME, silence_loss
from spiritlm.vocoder.model import UnitHifiGAN


def test_silence_term_reads_only_the_targets_silent_frames():
    y = torch.zeros(2, 1, 8 * SILENCE_FRAME)
    y[:, :, : 4 * SILENCE_FRAME] = 0.3 * torch.sin(torch.arange(4 * SILENCE_FRAME) * 0.3)  # loud, then silent
    y_hat = (y + 0.01 * torch.randn_like(y)).requires_grad_(True)  # a -40 dBFS hiss everywhere
    silence, dc = silence_loss(y_hat, y)
    silence.backward()
    g = y_hat.grad
    assert float(silence) > 10  # ln of -40 dBFS over the -100 dBFS floor: ~13.8 nats
    assert torch.all(g[..., : 4 * SILENCE_FRAME] == 0)  # speech frames are the mel loss's business
    # descending the gradient shrinks the hiss in the pauses
    assert torch.all(g[..., 4 * SILENCE_FRAME:] * y_hat.detach()[..., 4 * SILENCE_FRAME:] > 0)
    # the same output where the target is silent gives no loss; no silent frame, no loss
    quiet = torch.zeros_like(y)
    assert float(silence_loss(quiet, quiet)[0]) == 0.0
    s, _ = silence_loss(y_hat[..., : 4 * SILENCE_FRAME], y[..., : 4 * SILENCE_FRAME])
    assert float(s) == 0.0 and s.requires_grad
    # the DC term is the output's mean, whatever the target
    _, dc = silence_loss(torch.full((1, 1, 800), -0.02), y[:1])
    assert float(dc) == pytest.approx(0.02)


def test_untrained_generator_has_no_dc():
    # torch's default conv_post bias gave the untrained tiny vocoder a DC up to ~0.19, which
    # nothing in the mel loss removes; the initialisation now zeroes it
    for seed in range(3):
        torch.manual_seed(seed)
        g = UnitHifiGAN(VocoderConfig.preset("tiny", num_speakers=1, harmonic_source=False)).eval()
        with torch.no_grad():
            wav = g(torch.randint(0, 501, (1, 10)))
        assert abs(float(wav.mean())) < 2e-3, (seed, float(wav.mean()))


@pytest.mark.slow
def test_training_with_the_silence_loss_quiets_the_pauses(tmp_path):
    from fixtures import make_corpus, tiny_cfg

    from spiritlm.vocoder import Vocoder
    from spiritlm.vocoder.train import train_vocoder

    manifest, units = make_corpus(tmp_path, pause_units=3)
    levels = {}
    for name, (ws, wd) in {"off": (0.0, 0.0), "on": (20.0, 100.0)}.items():
        cfg = tiny_cfg(max_steps=30, batch_size=4, segment_units=6, lr=3e-3, log_every=10, save_every=0, val_every=0, seed=0)
        cfg.weights.silence, cfg.weights.dc = ws, wd
        s = train_vocoder(manifest, units, str(tmp_path / name), cfg, progress=False)
        assert ("silence" in s["train"]["30"]) == (name == "on")
        voc = Vocoder.from_pretrained(tmp_path / name)
        rows = [json.loads(line) for line in open(units)]
        pause, dcs = [], []
        for row in rows:
            wav = voc.synthesize({k: row[k] for k in ("hubert", "pitch", "style")}, speaker=0)
            pause += [wav[: 3 * 640 - 160], wav[len(wav) - 3 * 640 + 160:]]  # the pauses, 10 ms off the tones
            dcs.append(abs(float(wav.mean())))
        levels[name] = (10 * np.log10(np.mean(np.square(np.concatenate(pause))) + 1e-12), np.mean(dcs))
    (off_db, off_dc), (on_db, on_dc) = levels["off"], levels["on"]
    assert on_db < off_db - 6, levels
    assert on_dc < off_dc, levels


def test_cli_silence_and_dc_weights_reach_the_recipe(tmp_path, monkeypatch, capsys):
    import spiritlm.vocoder.train as T
    from spiritlm.cli import main

    seen = []
    monkeypatch.setattr(T, "train_vocoder", lambda manifest, units, out, cfg, **kw: seen.append((cfg.weights.silence, cfg.weights.dc))
                        or {"final_step": 0, "seconds": 0.0, "train": {}})
    man, units = tmp_path / "man.jsonl", tmp_path / "units.jsonl"
    man.write_text("{}\n")
    units.write_text("{}\n")
    argv = ["vocoder", "train", "--manifest", str(man), "--units", str(units), "--out", str(tmp_path / "o")]
    main(argv)  # the preset's recipe
    main([*argv, "--preset", "base"])
    main([*argv, "--silence_weight", "2.5", "--dc_weight", "0"])
    tiny, base = T.TrainConfig.from_recipe("vocoder-tiny").weights, T.TrainConfig.from_recipe("vocoder-base").weights
    assert seen == [(tiny.silence, tiny.dc), (base.silence, base.dc), (2.5, 0.0)]
    with pytest.raises(SystemExit):
        main([*argv, "--dc_weight", "-1"])
    assert "--dc_weight must be >= 0, got -1 (--dc_weight)" in capsys.readouterr().err
