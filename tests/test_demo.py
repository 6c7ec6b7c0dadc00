"""`spiritlm demo`: stage skipping, resuming and rerunning (on cheap stand-in stages), failures, and the quick preset end to end."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

import spiritlm.recipes.demo as demo_mod
from spiritlm.errors import UserError
from spiritlm.recipes.demo import DemoError, Stage, main, run_demo


def _text_stage(name: str, path: Path, needs=(), n: int = 5) -> Stage:
    """A real, cheap command: `spiritlm corpus text` writing ``path``."""
    return Stage(name, [["corpus", "text", "--out", str(path), "--num_sentences", str(n), "--seed", "0"]],
                 outputs=[path], owns=[path], needs=list(needs))


@pytest.fixture()
def two_stages(tmp_path, monkeypatch):
    out = tmp_path / "demo"
    a, b = out / "a.txt", out / "b.txt"
    monkeypatch.setattr(demo_mod, "build_stages", lambda o, p, s, t: [_text_stage("a", a), _text_stage("b", b, needs=[a], n=7)])
    return out, a, b


def test_stages_run_once_then_skip_and_resume(two_stages, capsys):
    out, a, b = two_stages
    summary = run_demo(out, "quick", threads=1)
    first = capsys.readouterr().out
    assert first.count("$ spiritlm corpus text") == 2
    assert a.is_file() and b.is_file() and len(b.read_text().splitlines()) == 7
    assert set(summary["stage_seconds"]) == {"a", "b"} and summary["incomplete_stages"] == []
    assert all(v >= 0 for v in summary["stage_cpu_seconds"].values()) and set(summary["stage_cpu_seconds"]) == {"a", "b"}
    assert json.loads((out / "demo_summary.json").read_text())["preset"] == "quick"
    assert (out / "report" / "report.md").is_file()
    # a second run finds both complete and runs nothing
    run_demo(out, "quick", threads=1)
    second = capsys.readouterr().out
    assert "$ spiritlm corpus text" not in second
    assert "[demo] a: already done, skipping" in second and "[demo] b: already done, skipping" in second
    # an output that disappeared makes its stage (only) run again
    b.unlink()
    run_demo(out, "quick", threads=1)
    third = capsys.readouterr().out
    assert third.count("$ spiritlm corpus text") == 1 and f"--out {b}" in third and b.is_file()


def test_only_reruns_one_stage_from_scratch(two_stages, capsys):
    out, a, b = two_stages
    run_demo(out, "quick", threads=1)
    capsys.readouterr()
    b.write_text("stale\n")
    run_demo(out, "quick", only="b", threads=1)
    printed = capsys.readouterr().out
    assert printed.count("$ spiritlm corpus text") == 1 and f"--out {b}" in printed
    assert len(b.read_text().splitlines()) == 7  # rewritten, not the stale file
    # a stage whose inputs are missing says which and does not run
    a.unlink()
    with pytest.raises(DemoError, match=r"a\.txt: missing, needed by stage 'b'"):
        run_demo(out, "quick", only="b", threads=1)
    with pytest.raises(UserError, match=r"unknown stage 'c' \(--only: choose from a, b, report\)"):
        run_demo(out, "quick", only="c", threads=1)


def test_a_failing_command_stops_the_demo_loudly(tmp_path, monkeypatch, capsys):
    out = tmp_path / "demo"
    bad = Stage("check", [["corpus", "check", str(tmp_path / "absent.jsonl")]], outputs=[out / "never"], owns=[])
    after = _text_stage("after", out / "after.txt")
    monkeypatch.setattr(demo_mod, "build_stages", lambda o, p, s, t: [bad, after])
    with pytest.raises(DemoError, match=r"stage 'check' failed: `spiritlm corpus check …` exited with status \d+ .*--only check"):
        run_demo(out, "quick", threads=1)
    assert not (out / ".demo" / "check.json").exists()  # not marked complete
    assert not (out / "after.txt").exists()  # later stages did not run
    # a stage that "succeeds" without writing its outputs is a failure too
    monkeypatch.setattr(demo_mod, "build_stages", lambda o, p, s, t: [Stage("x", [["corpus", "text", "--out", str(out / "y.txt"), "--num_sentences", "2"]],
                                                                          outputs=[out / "x.txt"], owns=[])])
    with pytest.raises(DemoError, match=r"x\.txt: stage 'x' ran but did not write it"):
        run_demo(out, "quick", threads=1)


def test_out_remembers_its_preset(two_stages):
    out, _, _ = two_stages
    run_demo(out, "quick", threads=1)
    with pytest.raises(UserError, match="made with --preset quick --seed 0, not --preset full --seed 0"):
        run_demo(out, "full", threads=1)
    with pytest.raises(UserError, match="unknown preset 'huge'"):
        run_demo(out, "huge", threads=1)


def test_only_report_rebuilds_the_report_alone(two_stages, capsys):
    out, a, _ = two_stages
    with pytest.raises(UserError, match=r"demo: no such demo folder \(--out\)"):
        main(["--preset", "quick", "--out", str(out), "--only", "report", "--debug"])
    out.mkdir()
    main(["--preset", "quick", "--out", str(out), "--only", "report"])
    printed = capsys.readouterr().out
    assert "$ spiritlm" not in printed and not a.exists()
    assert (out / "report" / "report.md").is_file()


def test_demo_is_a_spiritlm_command():
    cmd = [sys.executable, "-m", "spiritlm.cli", "demo", "--help"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "--preset" in res.stdout and "--only" in res.stdout
    res = subprocess.run([sys.executable, "-m", "spiritlm.recipes.demo", "--preset", "tiny", "--out", "/nonexistent/x"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and res.stderr.strip().splitlines()[-1].startswith("spiritlm demo: error: unknown preset 'tiny'")


def test_stage_names_are_unique_and_cover_the_pipeline(tmp_path):
    names = [s.name for s in demo_mod.build_stages(tmp_path, demo_mod.PRESETS["quick"], 0)]
    assert len(names) == len(set(names))
    assert names[:7] == ["corpus", "text", "tokenizer", "tokenize", "data", "lm-text", "lm-interleaved"]
    for needed in ("vocoder", "resynthesis", "generate", "judges", "eval-asr", "eval-tts", "eval-ic", "eval-stsp", "eval-zeroshot"):
        assert needed in names


def test_every_stage_needs_only_what_earlier_stages_write(tmp_path):
    """--only X checks X's inputs; each must be an output of a stage before X (else the check is wrong or the order is)."""
    written: set[Path] = set()
    for stage in demo_mod.build_stages(tmp_path, demo_mod.PRESETS["full"], 0):
        assert stage.needs or stage.name in ("corpus", "text"), stage.name
        for need in stage.needs:
            assert need in written, f"{stage.name} needs {need}, which no earlier stage writes"
        written.update(stage.outputs)
        assert all(any(o == own or own in o.parents for own in stage.owns) for o in stage.outputs), stage.name


@pytest.mark.parametrize("preset", ["quick", "full"])
def test_every_command_the_demo_runs_parses(tmp_path, preset):
    """Each stage's command line against its command's own parser (flags renamed elsewhere break here, not at minute 20)."""
    import jsonargparse

    from spiritlm.cli import load_commands, resolve_config
    from spiritlm.recipes.report import DemoLayout
    from spiritlm.train.config import parse_recipe

    layout = DemoLayout(tmp_path)
    layout.corpus.mkdir(parents=True)
    layout.manifest.write_text(json.dumps({"id": "u1", "audio": "wavs/u1.wav", "split": "test", "text": "the cat sat on it"}) + "\n")
    checked = 0
    for stage in demo_mod.build_stages(tmp_path, demo_mod.PRESETS[preset], 0, 1):
        for argv in stage.make_commands() if stage.make_commands else stage.commands:
            commands = load_commands(argv[0])
            fn, rest = (commands, argv[1:]) if callable(commands) else (commands[argv[1]], argv[2:])
            if argv[0] == "train":  # the LM recipe parser, with its checks (warm-up within max_steps, …)
                parse_recipe(rest)
            else:
                parser = jsonargparse.ArgumentParser(exit_on_error=False)
                parser.add_argument("--config", action=jsonargparse.ActionConfigFile)  # as spiritlm.cli adds it
                parser.add_function_arguments(fn, as_positional=getattr(fn, "cli_positional", False))
                rest = [resolve_config(a) if i and rest[i - 1] == "--config" else a for i, a in enumerate(rest)]  # packaged recipes by name
                parser.parse_args(rest)
                with pytest.raises(jsonargparse.ArgumentError):  # the parser does reject what it does not know
                    parser.parse_args([*rest, "--no_such_flag", "1"])
            checked += 1
    assert checked == 22  # eval-stsp runs two commands: --protocol meta and --protocol ours


@pytest.mark.slow
def test_quick_demo_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    main(["--preset", "quick", "--out", str(out), "--threads", "1"])
    first = capsys.readouterr().out
    summary = json.loads((out / "demo_summary.json").read_text())
    assert summary["incomplete_stages"] == [] and summary["corpus"]["num_utts"] == 120
    for key in ("pnmi", "phone_purity", "f0_rmse_cents", "vuv_error", "codebook_perplexity", "style_purity"):
        assert isinstance(summary["tokenizer_metrics"][key], float)
    train = summary["data"]["train"]
    assert all(train["subsets"][s]["documents"] > 0 for s in ("speech", "text", "interleaved"))
    for task in ("asr", "tts", "ic", "stsp", "zeroshot"):
        assert summary["evals"][task], task
    md = (out / "report" / "report.md").read_text()
    for png in ("loss_curves.png", "utterance_tokens.png", "f0_resynthesis.png", "metrics_vs_chance.png"):
        assert (out / "report" / png).is_file() and f"]({png})" in md
    assert "Not available" not in md and "missing" not in md
    assert list((out / "report" / "audio").glob("t2s_*.wav")) and list((out / "report" / "audio").glob("resynth_*.wav"))
    assert "$ spiritlm corpus synth" in first and "$ spiritlm eval zeroshot" in first
    # a second run finds every stage complete and runs no command
    main(["--preset", "quick", "--out", str(out), "--threads", "1"])
    second = capsys.readouterr().out
    assert "$ spiritlm corpus" not in second and "$ spiritlm train" not in second and second.count("already done") == len(summary["stage_seconds"])


def test_a_failed_only_on_a_new_folder_does_not_pin_its_preset(tmp_path, monkeypatch):
    """Issue 18 item 15: a failed `demo --only STAGE` on a new folder left `.demo/config.json`, which
    then refused `--preset full` ("made with --preset quick") although nothing was made."""
    out = tmp_path / "demo"
    bad = Stage("check", [["corpus", "check", str(tmp_path / "absent.jsonl")]], outputs=[out / "never"], owns=[])
    good = _text_stage("a", out / "a.txt")
    monkeypatch.setattr(demo_mod, "build_stages", lambda o, p, s, t: [bad, good])
    with pytest.raises(DemoError):
        run_demo(out, "quick", only="check", threads=1)
    assert not (out / ".demo" / "config.json").exists()
    monkeypatch.setattr(demo_mod, "build_stages", lambda o, p, s, t: [good])
    run_demo(out, "full", threads=1)  # not refused
    assert json.loads((out / ".demo" / "config.json").read_text()) == {"preset": "full", "seed": 0}
    with pytest.raises(UserError, match="made with --preset full"):  # once something was made, the preset sticks
        run_demo(out, "quick", threads=1)
