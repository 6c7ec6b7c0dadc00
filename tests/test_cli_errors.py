"""Bad input to the eval and vocoder commands ends in ONE line naming the file (and line) and the
flag, before the seconds of torch imports (issue 12 cases 11–12 for the newer commands)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from spiritlm.cli import main

# Each case runs in one fresh interpreter: the error line, and whether torch was imported to get there.
_RUNNER = textwrap.dedent(
    """
    import contextlib, io, json, sys
    from spiritlm.cli import main
    out = []
    for argv in json.loads(sys.argv[1]):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            try:
                main(argv)
                code = 0
            except SystemExit as e:
                code = e.code
        out.append({"code": code, "err": err.getvalue(), "torch": "torch" in sys.modules})
    print(json.dumps(out))
    """
)


def _run_fresh(cases: list[list[str]]) -> list[dict]:
    res = subprocess.run([sys.executable, "-c", _RUNNER, json.dumps(cases)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


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
        (["eval", "judges", "--manifest", str(good), "--out", f["out"], "--asr_steps", "-5"], "(--asr_steps)"),
    ]
    for (argv, msg), r in zip(cases, _run_fresh([c for c, _ in cases])):
        lines = r["err"].strip().splitlines()
        assert r["code"] == 1 and len(lines) == 1 and msg in lines[0], (argv, r)
        assert not r["torch"], argv


def test_vocoder_commands_check_flags_and_files_before_importing_torch(files):
    f = files
    man = f["tmp"] / "man.jsonl"
    man.write_text(json.dumps({"id": "a", "audio": "a.wav", "speaker": "s", "split": "train"}) + "\n")
    train = ["vocoder", "train", "--manifest", str(man), "--units", f["units"], "--out", f["out"]]
    cases = [
        (["vocoder", "train", "--manifest", str(f["tmp"] / "nope.jsonl"), "--units", f["units"], "--out", f["out"]],
         "nope.jsonl: file not found (--manifest)"),
        ([*train, "--config", "huge"], "unknown vocoder config 'huge' (choose from tiny, base, expressive) (--config)"),
        ([*train, "--max_steps", "-3"], "--max_steps must be >= 1, got -3 (--max_steps)"),
        ([*train, "--tokenizer", str(f["tmp"])], "not a speech tokenizer directory, no config.json (--tokenizer)"),
        (["vocoder", "synth", "--vocoder", str(f["tmp"] / "novoc"), "--units", f["units"], "--out", f["out"]],
         "novoc: vocoder not found (--vocoder)"),
        (["vocoder", "synth", "--vocoder", f["model"], "--units", str(f["tmp"] / "no.jsonl"), "--out", f["out"]],
         "no.jsonl: file not found (--units)"),
        (["vocoder", "eval", "--vocoder", str(f["tmp"] / "novoc"), "--manifest", str(man), "--units", f["units"], "--out", f["out"]],
         "novoc: vocoder not found (--vocoder)"),
    ]
    for (argv, msg), r in zip(cases, _run_fresh([c for c, _ in cases])):
        lines = r["err"].strip().splitlines()
        assert r["code"] == 1 and len(lines) == 1 and msg in lines[0], (argv, r)
        assert not r["torch"], argv
    assert not (f["tmp"] / "out").exists()  # nothing half-made


def test_vocoder_train_config_flag_reaches_the_recipe(files, monkeypatch):
    """jsonargparse.CLI drops a parameter named `config`: `--config base` used to train `tiny`."""
    import spiritlm.vocoder.train as T

    seen = {}

    def fake(manifest, units, out, cfg, **kw):
        seen["config"] = cfg.config
        return {"final_step": 0, "seconds": 0.0, "train": {}}

    monkeypatch.setattr(T, "train_vocoder", fake)
    man = files["tmp"] / "man.jsonl"
    man.write_text("{}\n")
    main(["vocoder", "train", "--manifest", str(man), "--units", files["units"], "--out", files["out"], "--config", "base"])
    assert seen["config"] == "base"
