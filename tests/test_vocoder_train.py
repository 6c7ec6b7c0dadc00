"""Vocoder training: data alignment, bad lines, loss going down, exact resume, the saved folder."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest
import soundfile as sf
import torch

from spiritlm.errors import UserError
from spiritlm.vocoder.data import (
    SegmentSampler,
    collate,
    cut_segment,
    load_utterances,
    repeat_codes,
)
from spiritlm.vocoder.model import upsample_codes
from spiritlm.vocoder.train import latest_checkpoint, train_vocoder

from fixtures import make_corpus, tiny_cfg

SR = 16_000
HOP = 640


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------


def test_repeat_codes_matches_model_upsampling():
    for codes, ratio, n in (([3, 4], 2, 5), ([3, 4, 5], 2, 3), ([7], 25, 30), ([1, 2], 25, 26)):
        ours = repeat_codes(np.array(codes), ratio, n)
        theirs = upsample_codes(torch.tensor([codes]), ratio, n)[0].numpy()
        assert ours.tolist() == theirs.tolist()


def test_segments_are_aligned(tmp_path):
    manifest, units = make_corpus(tmp_path)
    utts, report = load_utterances(manifest, units)
    assert report.skipped == 0 and len(utts) == 6
    raw = {json.loads(line)["id"]: json.loads(line) for line in open(units)}
    for u in utts:
        hub = np.array(raw[u.id]["hubert"].split(), dtype=np.int64)
        assert len(u.wav) == u.num_units * HOP  # samples = units x 640, the partial frame dropped
        assert u.num_units == min(len(hub), len(sf.read(tmp_path / "audio" / f"{u.id}.wav")[0]) // HOP)
    u = utts[0]
    pitch = np.array(raw[u.id]["pitch"].split(), dtype=np.int64)
    style = np.array(raw[u.id]["style"].split(), dtype=np.int64)
    for start in (0, 1, 7, u.num_units - 10):
        seg = cut_segment(u, start, 10)
        assert seg["audio"].shape == (10 * HOP,)
        np.testing.assert_array_equal(seg["audio"], u.wav[start * HOP : (start + 10) * HOP])
        np.testing.assert_array_equal(seg["units"], u.units[start : start + 10])
        # unit t of the utterance has pitch code t // 2 and style code t // 25
        t = np.arange(start, start + 10)
        np.testing.assert_array_equal(seg["pitch"], pitch[np.minimum(t // 2, len(pitch) - 1)])
        np.testing.assert_array_equal(seg["style"], style[np.minimum(t // 25, len(style) - 1)])
        # dedup + run lengths expand back to the segment's units
        np.testing.assert_array_equal(np.repeat(seg["dedup"], seg["durations"]), seg["units"])


def test_short_utterance_is_tiled_and_collate_pads(tmp_path):
    manifest, units = make_corpus(tmp_path)
    utts, _ = load_utterances(manifest, units)
    u = utts[0]
    seg = cut_segment(u, 0, u.num_units + 5)
    np.testing.assert_array_equal(seg["units"][u.num_units :], u.units[:5])
    np.testing.assert_array_equal(seg["audio"][u.num_units * HOP :], u.wav[: 5 * HOP])
    b = collate([cut_segment(utts[0], 0, 8), cut_segment(utts[1], 3, 8)])
    assert b["audio"].shape == (2, 1, 8 * HOP) and b["units"].shape == (2, 8) and b["pitch"].shape == (2, 8)
    assert b["durations"].sum(1).tolist() == [8, 8]
    assert (b["durations"] > 0).sum(1).tolist() == b["dedup_lengths"].tolist()


def test_sampler_state_round_trip(tmp_path):
    manifest, units = make_corpus(tmp_path)
    utts, _ = load_utterances(manifest, units)
    a = SegmentSampler(utts, 3, 6, seed=1)
    a.next_batch()
    state = json.loads(json.dumps(a.state_dict()))
    b = SegmentSampler(utts, 3, 6, seed=99)
    b.load_state_dict(state)
    for _ in range(4):
        x, y = a.next_batch(), b.next_batch()
        assert all(torch.equal(x[k], y[k]) for k in x)


def test_bad_lines_are_skipped_with_file_and_line(tmp_path):
    manifest, units = make_corpus(tmp_path)
    lines = open(units).read().splitlines()
    rec = json.loads(lines[1])
    rec["hubert"] = "1 2 x"
    lines[1] = json.dumps(rec)
    lines.insert(2, "{not json")
    rec = json.loads(lines[3])
    rec["hubert"] = " ".join(["1"] * 500)  # far more units than the audio has
    lines[3] = json.dumps(rec)
    lines.append(json.dumps({"id": "nobody", "hubert": "1 2"}))
    with open(units, "w") as f:
        f.write("\n".join(lines) + "\n")
    utts, report = load_utterances(manifest, units, num_units=20)
    assert len(utts) == 4 and report.skipped == 4
    assert report.errors[0].startswith(f"{units}:2: 'hubert' has a non-integer id 'x'")
    assert report.errors[1].startswith(f"{units}:3: not a JSON object")
    assert report.errors[2].startswith(f"{units}:4: 500 units for") and "--units" in report.errors[2]
    assert "nobody" in report.errors[3] and report.errors[3].startswith(f"{units}:8:")
    with pytest.raises(UserError, match=r"no usable utterance: 8 line\(s\) skipped \(first: .*units.jsonl:1: unit \d+ is beyond the vocoder's 10 units"):
        load_utterances(manifest, units, num_units=10)
    with pytest.raises(UserError, match=r"file not found \(--units\)"):
        load_utterances(manifest, str(tmp_path / "missing.jsonl"))


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------


def _weights(run_dir) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    ckpt = latest_checkpoint(run_dir)
    return load_file(str(ckpt / "generator.safetensors")) | {
        f"D.{k}": v for k, v in load_file(str(ckpt / "discriminator.safetensors")).items()
    }


def test_exact_resume(tmp_path):
    manifest, units = make_corpus(tmp_path)
    quiet = dict(progress=False)
    train_vocoder(manifest, units, str(tmp_path / "full"), tiny_cfg(), **quiet)
    train_vocoder(manifest, units, str(tmp_path / "split"), tiny_cfg(), stop_after=2, **quiet)
    assert latest_checkpoint(tmp_path / "split").name == "step_2"
    assert not (tmp_path / "split" / "config.json").exists()  # not finished: no vocoder yet
    from spiritlm.vocoder import Vocoder
    from spiritlm.vocoder.train import checkpoint_to_vocoder

    checkpoint_to_vocoder(tmp_path / "split", latest_checkpoint(tmp_path / "split"), tmp_path / "step2")
    assert Vocoder.from_pretrained(tmp_path / "step2").speakers == ["spk0", "spk1"]
    s = train_vocoder(manifest, units, str(tmp_path / "split"), tiny_cfg(), resume=True, **quiet)
    assert s["final_step"] == 4
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "split")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    full = json.loads((tmp_path / "full" / "metrics.json").read_text())["train"]
    split = json.loads((tmp_path / "split" / "metrics.json").read_text())["train"]
    assert [full[k]["loss_g"] for k in ("3", "4")] == [split[k]["loss_g"] for k in ("3", "4")]
    # only the newest complete checkpoint is kept, no temporary folder is left
    assert sorted(p.name for p in (tmp_path / "split" / "checkpoints").iterdir()) == ["step_4"]


def test_loss_goes_down_and_folder_loads(tmp_path):
    from spiritlm.vocoder import Vocoder

    manifest, units = make_corpus(tmp_path)
    # 12 steps of mel + duration warm-up, then 8 with the discriminator
    cfg = tiny_cfg(max_steps=20, batch_size=4, segment_units=6, lr=2e-3, log_every=2, save_every=0, val_every=20, disc_start_step=12)
    s = train_vocoder(manifest, units, str(tmp_path / "run"), cfg, progress=False)
    mel = [s["train"][k]["mel_l1"] for k in ("2", "12", "20")]
    assert mel[2] < mel[0] * 0.9 and mel[1] < mel[0], mel
    dur = [s["train"][k]["dur_mse"] for k in ("2", "20")]
    assert dur[-1] < dur[0], dur
    assert "loss_d" not in s["train"]["12"] and "loss_d" in s["train"]["16"]
    assert "20" in s["val"] and (tmp_path / "run" / "samples" / "step_20" / "u4.wav").is_file()
    assert (tmp_path / "run" / "tb").is_dir()
    voc = Vocoder.from_pretrained(tmp_path / "run")
    assert voc.speakers == ["spk0", "spk1"]
    assert voc.config.num_pitch == 64 and voc.config.num_style == 100  # tiny has none: Meta's sizes
    line = json.loads(open(units).readline())
    wav = voc.synthesize({k: line[k] for k in ("hubert", "pitch", "style")}, speaker="spk1")
    assert wav.shape == (len(line["hubert"].split()) * HOP,)


def test_tokenizer_sizes_and_mismatch(tmp_path):
    manifest, units = make_corpus(tmp_path)
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "config.json").write_text(json.dumps({"format": "spiritlm-speech-tokenizer", "kind": "expressive",
                                                 "n_units": 10, "n_pitch": 8, "n_style": 4}))
    with pytest.raises(UserError, match=r"no usable utterance.*unit \d+ is beyond the vocoder's 10 units"):
        train_vocoder(manifest, units, str(tmp_path / "run"), tiny_cfg(), tokenizer=str(tok), progress=False)
    with pytest.raises(UserError, match=r"config.json: not a speech tokenizer directory \(--speech_tokenizer\)"):
        train_vocoder(manifest, units, str(tmp_path / "run"), tiny_cfg(), tokenizer=str(tmp_path), progress=False)


# --- the trainer rule (issue 18 items 2, 3, 5; issue 19: one checkpointer) ----------------------


def test_finished_vocoder_is_refused_unless_overwrite(tmp_path):
    """Item 2: `vocoder train --out DIR` on a trained vocoder does not replace it silently."""
    from spiritlm.cli import main

    manifest, units = make_corpus(tmp_path)
    run = tmp_path / "run"
    quiet = dict(progress=False)
    train_vocoder(manifest, units, str(run), tiny_cfg(max_steps=2, save_every=1), **quiet)
    before = (run / "model.safetensors").read_bytes()
    with pytest.raises(UserError, match=r"holds a trained vocoder.*--overwrite true"):
        train_vocoder(manifest, units, str(run), tiny_cfg(max_steps=1), **quiet)
    assert (run / "model.safetensors").read_bytes() == before
    # the CLI says it in one line, before reading the data
    with pytest.raises(SystemExit):
        main(["vocoder", "train", "--manifest", manifest, "--units", units, "--out", str(run), "--max_steps", "1"])
    # --overwrite true: a new run in its place, the old checkpoints and metrics gone
    s = train_vocoder(manifest, units, str(run), tiny_cfg(max_steps=1, seed=3), overwrite=True, **quiet)
    assert s["final_step"] == 1 and sorted(s["train"]) == ["1"]
    assert (run / "model.safetensors").read_bytes() != before
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_1"]


def test_interrupted_run_resumes_by_itself_and_a_changed_setting_is_refused(tmp_path, caplog):
    """Item 3: rerunning without --resume continues from the checkpoint (not from step 0, and the
    checkpoint survives); other settings are refused naming the flag; --overwrite starts over."""
    manifest, units = make_corpus(tmp_path)
    run = tmp_path / "run"
    caplog.set_level(logging.INFO, logger="spiritlm")
    quiet = dict(progress=False)
    train_vocoder(manifest, units, str(run), tiny_cfg(), stop_after=2, **quiet)
    ckpt = run / "checkpoints" / "step_2"
    stamp = (ckpt / "generator.safetensors").stat().st_mtime_ns
    with pytest.raises(UserError, match=r"train_config.json: an unfinished run with lr 0.0002, this command has 0.001 \(--lr\).*--overwrite true"):
        train_vocoder(manifest, units, str(run), tiny_cfg(lr=1e-3), **quiet)
    with pytest.raises(UserError, match=r"with seed 0, this command has 1 \(--seed\)"):
        train_vocoder(manifest, units, str(run), tiny_cfg(seed=1), **quiet)
    assert (ckpt / "generator.safetensors").stat().st_mtime_ns == stamp  # nothing touched
    assert (ckpt / "COMPLETE").read_text() == "2\n"  # the LM's marker (spiritlm.checkpointing)
    caplog.clear()
    s = train_vocoder(manifest, units, str(run), tiny_cfg(max_steps=3), **quiet)  # max_steps may change
    lines = [r.getMessage() for r in caplog.records]
    assert s["final_step"] == 3 and any(f"resumed from {ckpt} (step 2)" in ln for ln in lines), lines
    # --overwrite true on an unfinished run of other settings: from step 0
    caplog.clear()
    s = train_vocoder(manifest, units, str(run), tiny_cfg(lr=1e-3, max_steps=1), overwrite=True, **quiet)
    lines = [r.getMessage() for r in caplog.records]
    assert s["final_step"] == 1 and lines and not any("resumed" in ln for ln in lines)


def test_truncated_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys):
    """Item 5: a truncated newest checkpoint is set aside with a warning naming the file, and the
    run resumes from the previous one to the same weights as an uninterrupted run."""
    manifest, units = make_corpus(tmp_path)
    quiet = dict(progress=False)
    train_vocoder(manifest, units, str(tmp_path / "full"), tiny_cfg(), **quiet)
    run = tmp_path / "split"
    train_vocoder(manifest, units, str(run), tiny_cfg(save_every=1, keep_checkpoints=2), stop_after=3, **quiet)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_2", "step_3"]
    bad = run / "checkpoints" / "step_3" / "generator.safetensors"
    bad.write_bytes(bad.read_bytes()[:200])
    capsys.readouterr()
    s = train_vocoder(manifest, units, str(run), tiny_cfg(save_every=1, keep_checkpoints=2), **quiet)
    err = capsys.readouterr().err
    assert f"{bad}: unreadable" in err and "set aside as step_3.bad" in err, err
    assert s["final_step"] == 4 and (run / "checkpoints" / "step_3.bad" / "generator.safetensors").is_file()
    a, b = _weights(tmp_path / "full"), _weights(run)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_save_keeps_the_previous_one_until_the_new_one_is_in_place(tmp_path, monkeypatch):
    """Item 5 + issue 19: saving over a checkpoint of the same step never deletes the complete
    one before the new one is whole; `keep` means the LM's (0: all, N: the N most recent)."""
    from torch import nn

    from spiritlm.vocoder import train as T

    class Sampler:
        def state_dict(self):
            return {"pos": 0}

    g, d = nn.Linear(2, 2), nn.Linear(2, 1)
    opt_g, opt_d = torch.optim.AdamW(g.parameters()), torch.optim.AdamW(d.parameters())
    sg, sd = (torch.optim.lr_scheduler.ExponentialLR(o, 0.9) for o in (opt_g, opt_d))

    def save(step, keep):
        return T.save_checkpoint(tmp_path, step, g, d, opt_g, opt_d, sg, sd, Sampler(), keep)

    for step in (1, 2, 3):
        save(step, keep=0)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_1", "step_2", "step_3"]
    save(4, keep=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_3", "step_4"]
    real_replace = os.replace

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError):
        save(4, keep=2)  # a save of step 4 again (a rerun) that fails at the rename
    monkeypatch.setattr(os, "replace", real_replace)
    assert T.read_checkpoint(tmp_path / "checkpoints" / "step_4")["trainer"]["step"] == 4
    assert T.latest_checkpoint(tmp_path).name == "step_4"


def test_truncated_vocoder_folder_is_one_line_naming_the_file_and_flag(tmp_path):
    """Item 13: a truncated model.safetensors (SafetensorError) or Meta generator.pt
    (PytorchStreamReader) is a UserError naming the file and --vocoder."""
    from spiritlm.vocoder import Vocoder, VocoderConfig
    from spiritlm.vocoder.model import UnitHifiGAN

    torch.manual_seed(0)
    voc = Vocoder(UnitHifiGAN(VocoderConfig.preset("tiny", num_units=8, num_pitch=0, num_style=0, num_speakers=1)))
    voc.save(tmp_path / "ours")
    weights = tmp_path / "ours" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:64])
    with pytest.raises(UserError, match=rf"{weights}: cannot read .*\(--vocoder\)"):
        Vocoder.from_pretrained(tmp_path / "ours")
    voc2 = Vocoder(UnitHifiGAN(VocoderConfig.preset("tiny", num_units=8, num_pitch=0, num_style=0, num_speakers=1,
                                                    harmonic_source=False)))  # Meta's layout has no source
    voc2.export_meta(tmp_path / "meta")
    gen = tmp_path / "meta" / "generator.pt"
    gen.write_bytes(gen.read_bytes()[:200])
    with pytest.raises(UserError, match=rf"{gen}: cannot read the checkpoint .*\(--vocoder\)"):
        Vocoder.from_pretrained(tmp_path / "meta")


# --- the trainer skeleton (issue 19) and its log window (issue 18 item 10) ------------------------


def test_resume_logs_what_the_uninterrupted_run_logs_when_log_every_does_not_divide_save_every(tmp_path):
    """The log window is saved with the checkpoint: a run stopped at step 3 (log_every 2) and
    resumed writes the same step-4 record as the uninterrupted run, and no partial record at 3."""
    manifest, units = make_corpus(tmp_path)
    quiet = dict(progress=False)
    cfg = dict(max_steps=4, log_every=2, save_every=3)
    full = train_vocoder(manifest, units, str(tmp_path / "full"), tiny_cfg(**cfg), **quiet)
    train_vocoder(manifest, units, str(tmp_path / "split"), tiny_cfg(**cfg), stop_after=3, **quiet)
    state = json.loads((tmp_path / "split" / "checkpoints" / "step_3" / "trainer_state.json").read_text())
    assert sorted(state["log_window"]) and all(len(v) == 1 for v in state["log_window"].values())  # step 3's values
    split = train_vocoder(manifest, units, str(tmp_path / "split"), tiny_cfg(**cfg), **quiet)
    assert sorted(split["train"], key=int) == ["2", "4"]
    for key in ("loss_g", "mel_l1", "dur_mse"):
        assert split["train"]["4"][key] == full["train"]["4"][key], key


def test_cli_reads_the_packaged_recipe_and_flags_override_it(tmp_path, monkeypatch):
    """`--config vocoder-tiny` is recipes/configs/vocoder-tiny.yaml (by name from any folder; a flag
    after it overrides it), the Python API reads the same file, `--preset NAME` alone takes that
    preset's sizes from its file, and the demo's vocoder stage is the recipe."""
    import spiritlm.vocoder.train as T
    from spiritlm.cli import main
    from spiritlm.recipes.demo import PRESETS, DemoLayout, vocoder_stages

    seen = []
    monkeypatch.setattr(T, "train_vocoder", lambda manifest, units, out, cfg, **kw: seen.append(cfg)
                        or {"final_step": 0, "seconds": 0.0, "train": {}})
    man, units = tmp_path / "man.jsonl", tmp_path / "units.jsonl"
    man.write_text("{}\n")
    units.write_text("{}\n")
    argv = ["vocoder", "train", "--manifest", str(man), "--units", str(units), "--out", str(tmp_path / "o")]
    monkeypatch.chdir(tmp_path)  # the packaged name resolves from any folder
    main([*argv, "--config", "vocoder-tiny"])
    main([*argv, "--config", "vocoder-tiny", "--lr", "5e-4", "--stft_weight", "2"])
    own = tmp_path / "mine.yaml"
    own.write_text("preset: base\nmax_steps: 7\nsilence_weight: 0.5\n")
    main([*argv, "--config", str(own)])
    main([*argv, "--preset", "base"])
    tiny = T.TrainConfig.from_recipe("vocoder-tiny")
    assert seen[0] == tiny and (tiny.preset, tiny.lr, tiny.disc_width_div, tiny.disc_start_step, tiny.max_steps, tiny.weights.stft) == (
        "tiny", 1e-3, 16, 700, 800, 15.0)
    assert (seen[1].lr, seen[1].weights.stft, seen[1].max_steps) == (5e-4, 2.0, 800)
    assert (seen[2].preset, seen[2].max_steps, seen[2].weights.silence, seen[2].batch_size) == ("base", 7, 0.5, 16)
    base = T.TrainConfig.from_recipe("vocoder-base")
    assert (seen[3].batch_size, seen[3].segment_units, seen[3].disc_width_div, seen[3].weights.stft) == (16, 14, 1, 0.0) == (
        base.batch_size, base.segment_units, base.disc_width_div, base.weights.stft)
    assert T.TrainConfig.from_recipe("vocoder-expressive").preset == "expressive"
    own.write_text("learning_rate: 1\n")
    with pytest.raises(UserError, match=r"mine.yaml: unknown key\(s\) learning_rate \(keys: preset, max_steps"):
        T.TrainConfig.from_recipe(str(own))
    (train,) = vocoder_stages(DemoLayout(tmp_path / "demo"), PRESETS["full"], seed=0, threads=1)[:1]
    cmd = train.commands[0]
    assert cmd[cmd.index("--config") + 1] == "vocoder-tiny" and "--lr" not in cmd and "--disc_width_div" not in cmd
    assert cmd[cmd.index("--disc_start_step") + 1] == str(tiny.disc_start_step)  # the full demo is the recipe


@pytest.mark.slow
def test_a_run_of_an_older_version_resumes(tmp_path):
    """train_config.json of a version whose preset key was `config` is the same run."""
    manifest, units = make_corpus(tmp_path)
    quiet = dict(progress=False)
    run = tmp_path / "run"
    train_vocoder(manifest, units, str(run), tiny_cfg(), stop_after=2, **quiet)
    rec = json.loads((run / "train_config.json").read_text())
    rec = {("config" if k == "preset" else k): v for k, v in rec.items()}
    (run / "train_config.json").write_text(json.dumps(rec))
    assert train_vocoder(manifest, units, str(run), tiny_cfg(), **quiet)["final_step"] == 4
