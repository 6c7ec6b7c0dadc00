"""Bad input to the eval and vocoder commands ends in ONE line naming the file (and line) and the
flag, before the seconds of torch imports (issue 12 cases 11–12 for the newer commands)."""

from __future__ import annotations

import json

import pytest

from spiritlm.cli import main

from fixtures import run_fresh as _run_fresh  # one fresh interpreter per list of cases: error lines, and whether torch was imported


_LINE = {"id": "a", "audio": "a.wav", "sample_rate": 16000, "duration": 1.0, "speaker": "s", "style": "default",
         "text": "x y", "words": [{"word": "x", "start": 0.1, "end": 0.4}, {"word": "y", "start": 0.5, "end": 0.9}],
         "split": "test", "sentiment": "positive"}


@pytest.fixture()
def files(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(_LINE) + '\n{"id": "b", oops\n')
    model = tmp_path / "model"
    model.mkdir()
    units = tmp_path / "units.jsonl"
    units.write_text(json.dumps({"id": "a", "hubert": "1 2"}) + "\n")
    return {"bad": str(bad), "model": str(model), "units": str(units), "out": str(tmp_path / "out"), "tmp": tmp_path}


def test_eval_commands_name_the_bad_manifest_line_before_importing_torch(files):
    f = files
    common = ["--model", f["model"], "--manifest", f["bad"], "--units", f["units"], "--out", f["out"]]
    cases = [["eval", t, *common] for t in ("asr", "ic", "tts", "stsp")]
    cases += [["eval", "judges", "--manifest", f["bad"], "--out", f["out"]],
              ["eval", "zeroshot", "--model", f["model"], "--manifest", f["bad"], "--out", f["out"]]]
    for case, r in zip(cases, _run_fresh(cases)):
        lines = r["err"].strip().splitlines()
        assert r["code"] == 1 and len(lines) == 1, (case, r)
        assert f"{f['bad']}:2:" in lines[0] and "(--manifest)" in lines[0], (case, lines)
        assert not r["torch"], f"{case[:2]} imported torch before checking its manifest"


def test_eval_commands_check_paths_and_numbers_first(files):
    f = files
    good = f["tmp"] / "m.jsonl"
    good.write_text(json.dumps(_LINE) + "\n" + json.dumps({**_LINE, "id": "b", "split": "train"}) + "\n")
    common = ["--manifest", str(good), "--units", f["units"], "--out", f["out"]]
    cases = [
        (["eval", "tts", "--model", str(f["tmp"] / "nomodel"), *common], "nomodel: no such model directory (--model)"),
        (["eval", "stsp", "--model", f["model"], "--vocoder", str(f["tmp"] / "novoc"), *common], "novoc: no such vocoder directory (--vocoder)"),
        (["eval", "stsp", "--model", f["model"], *common, "--directions", "[t2x]"], "(--directions)"),
        (["eval", "tts", "--model", f["model"], *common, "--shots", "-1"], "--shots must be >= 0, got -1 (--shots)"),
        (["eval", "tts", "--model", f["model"], "--manifest", str(good), "--units", str(f["tmp"] / "nounits.jsonl"), "--out", f["out"]],
         "nounits.jsonl: no such units file (--units)"),
        (["eval", "judges", "--manifest", str(good), "--out", f["out"], "--which", "[asr,mood]"], "unknown judges ['mood']"),
        (["eval", "judges", "--manifest", str(good), "--out", f["out"], "--asr_steps", "-5"], "--asr_steps must be >= 1, got -5 (--asr_steps)"),
    ]
    for (argv, msg), r in zip(cases, _run_fresh([c for c, _ in cases])):
        lines = r["err"].strip().splitlines()
        assert r["code"] == (2 if msg.startswith("--") else 1) and len(lines) == 1 and msg in lines[0], (argv, r)  # 2: FlagError
        assert not r["torch"], argv


def test_vocoder_commands_check_flags_and_files_before_importing_torch(files):
    f = files
    man = f["tmp"] / "man.jsonl"
    man.write_text(json.dumps({"id": "a", "audio": "a.wav", "speaker": "s", "split": "train"}) + "\n")
    train = ["vocoder", "train", "--manifest", str(man), "--units", f["units"], "--out", f["out"]]
    cases = [
        (["vocoder", "train", "--manifest", str(f["tmp"] / "nope.jsonl"), "--units", f["units"], "--out", f["out"]],
         "nope.jsonl: file not found (--manifest)"),
        ([*train, "--preset", "huge"], "unknown vocoder preset 'huge' (choose from tiny, base, expressive) (--preset)"),
        ([*train, "--max_steps", "-3"], "--max_steps must be >= 1, got -3 (--max_steps)"),
        ([*train, "--speech_tokenizer", str(f["tmp"])], "not a speech tokenizer directory, no config.json (--speech_tokenizer)"),
        (["vocoder", "synth", "--vocoder", str(f["tmp"] / "novoc"), "--units", f["units"], "--out", f["out"]],
         "novoc: vocoder not found (--vocoder)"),
        (["vocoder", "synth", "--vocoder", f["model"], "--units", str(f["tmp"] / "no.jsonl"), "--out", f["out"]],
         "no.jsonl: file not found (--units)"),
        (["vocoder", "eval", "--vocoder", str(f["tmp"] / "novoc"), "--manifest", str(man), "--units", f["units"], "--out", f["out"]],
         "novoc: vocoder not found (--vocoder)"),
    ]
    for (argv, msg), r in zip(cases, _run_fresh([c for c, _ in cases])):
        lines = r["err"].strip().splitlines()
        # status 2: a value the flag's type refuses (spiritlm.errors.FlagError); 1: a bad file
        assert r["code"] == (2 if msg.startswith("--") else 1) and len(lines) == 1 and msg in lines[0], (argv, r)
        assert not r["torch"], argv
    assert not (f["tmp"] / "out").exists()  # nothing half-made


def test_vocoder_train_config_flag_reaches_the_recipe(files, monkeypatch):
    """jsonargparse.CLI dropped a parameter named `config`: `--config base` used to train `tiny` (now --preset)."""
    import spiritlm.vocoder.train as T

    seen = {}

    def fake(manifest, units, out, cfg, **kw):
        seen["config"] = cfg.preset
        return {"final_step": 0, "seconds": 0.0, "train": {}}

    monkeypatch.setattr(T, "train_vocoder", fake)
    man = files["tmp"] / "man.jsonl"
    man.write_text("{}\n")
    main(["vocoder", "train", "--manifest", str(man), "--units", files["units"], "--out", files["out"], "--preset", "base"])
    assert seen["config"] == "base"


def test_vocoder_train_with_no_usable_units_line_names_them_and_leaves_no_folder(tmp_path, capsys):
    """Every units line bad: one line naming the file, its first bad line and the flags; no half-made --out."""
    from fixtures import make_corpus

    manifest, _ = make_corpus(tmp_path, n_utts=3)
    units = tmp_path / "bad_units.jsonl"
    units.write_text('{"id": "u0", "hubert": "1 2 x"}\n{"id": "u1", oops\n')
    with pytest.raises(SystemExit):
        main(["vocoder", "train", "--manifest", manifest, "--units", str(units), "--out", str(tmp_path / "run"), "--max_steps", "1"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and f"{units}:1: 'hubert' has a non-integer id 'x'" in lines[0] and "(--units / --manifest)" in lines[0], lines
    assert not (tmp_path / "run").exists()


def test_eval_asr_ic_zeroshot_check_units_numbers_and_sets_first(files):
    f = files
    good = f["tmp"] / "m.jsonl"
    good.write_text(json.dumps(_LINE) + "\n" + json.dumps({**_LINE, "id": "b", "split": "train"}) + "\n")
    torn = f["tmp"] / "torn.jsonl"
    torn.write_text(json.dumps({"id": "a", "hubert": "1 2"}) + '\n{"id": "b", "hub\n')
    common = ["--model", f["model"], "--manifest", str(good), "--out", f["out"]]
    cases = [
        (["eval", "asr", *common, "--units", str(torn)], f"{torn}:2: invalid JSON"),
        (["eval", "ic", *common, "--units", f["units"], "--shots", "-2"], "--shots must be >= 0, got -2 (--shots)"),
        (["eval", "zeroshot", "--model", f["model"], "--sets", str(f["tmp"] / "nosets"), "--out", f["out"]], "nosets: no such folder (--sets)"),
        (["eval", "asr", "--model", str(f["tmp"] / "nomodel"), "--manifest", str(good), "--units", f["units"], "--out", f["out"]],
         "(--model)"),
    ]
    for (argv, msg), r in zip(cases, _run_fresh([c for c, _ in cases])):
        lines = r["err"].strip().splitlines()
        assert r["code"] == (2 if msg.startswith("--") else 1) and len(lines) == 1 and msg in lines[0], (argv, r)  # 2: FlagError
        assert not r["torch"], argv


def test_vocoder_synth_unknown_speaker_is_one_error_for_the_flag(tmp_path, capsys):
    import torch

    from spiritlm.vocoder import Vocoder, VocoderConfig
    from spiritlm.vocoder.model import UnitHifiGAN

    torch.manual_seed(0)
    cfg = VocoderConfig.preset("tiny", num_units=20, num_speakers=2, embedding_dim=8, upsample_initial_channel=32,
                               resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3, 5]], duration_hidden=8)
    Vocoder(UnitHifiGAN(cfg), speakers=["alice", "bob"]).save(tmp_path / "voc")
    units = tmp_path / "u.jsonl"
    units.write_text("".join(json.dumps({"id": f"a{i}", "hubert": "1 2 3"}) + "\n" for i in range(3)))
    with pytest.raises(SystemExit):
        main(["vocoder", "synth", "--vocoder", str(tmp_path / "voc"), "--units", str(units), "--out", str(tmp_path / "o"), "--speaker", "zed"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["spiritlm vocoder synth: error: unknown speaker 'zed'; known: alice, bob (--speaker)"], lines
    assert not (tmp_path / "o").exists()


def test_readme_command_table_lists_every_command_and_subcommand():
    """Every command `spiritlm --help` shows (and every subcommand of a group) is in README.md's table."""
    from pathlib import Path

    from spiritlm.cli import COMMAND_GROUPS, load_commands

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = "\n".join(line for line in readme.splitlines() if line.startswith("|"))
    missing = []
    for group in COMMAND_GROUPS:
        commands = load_commands(group)
        names = [f"spiritlm {group}"] if callable(commands) else [f"spiritlm {group} {sub}" for sub in commands]
        missing += [n for n in names if f"`{n}" not in table]
    assert not missing, f"README.md's command table lacks {missing}"


def test_every_command_reports_a_missing_path_before_importing_torch(tmp_path):
    """Issue 18 item 14: `checkpoint info` took 10 s and `tokenizer assemble` 25 s to say that a path
    does not exist. Checked by what was imported when the error came (not by the clock): every
    command's missing input is one line naming it and its flag, with torch not imported yet."""
    nope, out = str(tmp_path / "nope"), str(tmp_path / "out")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"id": "a", "audio": "a.wav", "text": "hi"}\n')
    cases = [
        (["checkpoint", "info", "--checkpoint", nope], "(--checkpoint)"),
        (["checkpoint", "export", "--checkpoint", nope, "--out", out], "(--checkpoint)"),
        (["tokenizer", "assemble", "--hubert", nope, "--kmeans", nope, "--out", out], "(--hubert)"),
        (["tokenizer", "assemble", "--meta_checkpoints", nope, "--out", out], "(--meta_checkpoints)"),
        (["tokenizer", "dump-features", "--manifest", nope, "--out", out], "(--manifest)"),
        (["tokenizer", "train", "--manifest", nope, "--out", out], "(--manifest)"),
        (["tokenize", "--manifest", nope, "--speech_tokenizer", nope, "--out", out], "(--manifest)"),
        (["data", "build", "--manifest", nope, "--units", nope, "--out", out], "(--manifest)"),
        (["data", "train-text-tokenizer", "--text_file", nope, "--out", out], "(--text_file)"),
        (["train", "--config", nope + ".yaml"], "(--config)"),
        (["generate", "--model", nope, "--text", "hi"], "(--model)"),
        (["eval", "asr", "--model", nope, "--manifest", nope, "--units", nope, "--out", out], "(--manifest)"),
        (["eval", "zeroshot", "--model", nope, "--sets", nope, "--out", out], "(--sets)"),
        (["eval", "judges", "--manifest", nope, "--out", out], "(--manifest)"),
        (["vocoder", "synth", "--vocoder", nope, "--units", nope, "--out", out], "(--units)"),
        (["vocoder", "train", "--manifest", nope, "--units", nope, "--out", out], "(--manifest)"),
        (["vocoder", "eval", "--vocoder", nope, "--manifest", nope, "--units", nope, "--out", out], "(--manifest)"),
        (["demo", "--only", "report", "--out", nope], "(--out)"),
        (["corpus", "import", "librispeech", "--src", nope, "--out", out], "(--src)"),
        (["corpus", "import", "lhotse", "--src", nope, "--out", out], "(--src)"),
        (["corpus", "export", "lhotse", "--manifest", nope, "--out", out + ".jsonl"], "(--manifest)"),
        (["corpus", "align", "--manifest", nope, "--aligner", "mms_fa", "--out", out], "(--manifest)"),
        (["corpus", "align", "--manifest", str(manifest), "--aligner", nope, "--out", out], "(--aligner)"),
        (["corpus", "segment", "--manifest", nope, "--out", out], "(--manifest)"),
        (["eval", "ic", "--model", nope, "--manifest", nope, "--units", nope, "--out", out], "(--manifest)"),
        (["eval", "stsp", "--model", nope, "--manifest", nope, "--units", nope, "--out", out], "(--manifest)"),
        (["eval", "stsp-score", "--pred", nope, "--ref", nope], "(--pred)"),
        (["generate", "--model", nope, "--text", "hi", "--vocoder", nope, "--out", out + ".wav"], "(--model)"),
        (["serve", "--model", nope], "(--model)"),
    ]
    for (argv, flag), r in zip(cases, _run_fresh([c for c, _ in cases])):
        lines = r["err"].strip().splitlines()
        assert r["code"] == 1 and len(lines) == 1, (argv, r)
        assert "nope" in lines[0] and flag in lines[0], (argv, lines)
        assert not r["torch"], f"{argv[:2]} imported torch before reporting its missing path"
