"""Issue 18 item 4: every command that writes an output follows one rule (spiritlm.atomic).

Each output-writing command runs twice on tiny inputs, in process (``spiritlm.cli.main``): the
first run writes its output; the second is refused with one line naming the output and
``--overwrite true`` and leaves the output as it was; ``--overwrite true`` replaces it (the
output's marker file is a new file). Commands that write no output, or whose rule is tested
elsewhere, are listed at the end with the reason.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from spiritlm import cli

FIXTURES = Path(__file__).parent / "data" / "data_pipeline"


def run(argv) -> tuple[int, str]:
    """``spiritlm ARGV`` in process; returns (exit status, stderr's last line)."""
    import contextlib
    import io

    err = io.StringIO()
    code = 0
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            cli.main([str(a) for a in argv])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
    text = err.getvalue()
    assert "Traceback" not in text, text
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return code, lines[-1] if lines else ""


# ---------------------------------------------------------------------------------------------
# tiny inputs: 6 tone WAVs, an MFCC + k-means tokenizer, their units, a toy LM, judges, a vocoder
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from fixtures import tiny_hf_llama
    from spiritlm.data.synthetic import toy_tokenizer
    from spiritlm.judges import LABELS
    from spiritlm.judges import models as J
    from spiritlm.vocoder import VocoderConfig
    from spiritlm.vocoder.api import save_pretrained
    from spiritlm.vocoder.model import UnitHifiGAN

    d = tmp_path_factory.mktemp("world")
    rng = np.random.default_rng(0)
    (d / "wavs").mkdir()
    words = ["good", "bad", "fine", "great", "awful", "okay"]
    lines = []
    for i in range(6):
        sec = 0.5 + 0.1 * i
        t = np.arange(int(16000 * sec)) / 16000
        wav = (0.3 * np.sin(2 * np.pi * (120 + 20 * i) * t) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)
        sf.write(d / "wavs" / f"u{i}.wav", wav, 16000, subtype="PCM_16")
        lines.append({"id": f"u{i}", "audio": f"wavs/u{i}.wav", "sample_rate": 16000, "duration": round(t.size / 16000, 6),
                      "speaker": "s0", "style": "neutral", "text": f"it was {words[i]}",
                      "words": [{"word": "it", "start": 0.0, "end": 0.1}, {"word": "was", "start": 0.1, "end": 0.2},
                                {"word": words[i], "start": 0.2, "end": sec}],
                      "sentiment": LABELS[i % 3], "intent": f"i{i % 2}", "split": "test" if i >= 4 else "train"})
    manifest = d / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(x) + "\n" for x in lines))
    torch.manual_seed(0)
    torch.save({"cluster_centers": torch.randn(8, 39).numpy(), "n_clusters": 8}, d / "km.pt")
    assert run(["tokenizer", "assemble", "--hubert", "mfcc", "--kmeans", d / "km.pt", "--out", d / "tok"])[0] == 0
    assert run(["tokenize", "--manifest", manifest, "--speech_tokenizer", d / "tok", "--out", d / "units.jsonl"])[0] == 0
    tok = toy_tokenizer(d / "lmtok", num_hubert=64)
    tiny_hf_llama(d / "lm", vocab_size=tok.vocab_size, tokenizer_model=d / "lmtok" / "tokenizer.model", max_position_embeddings=512)
    texts = [x["text"] for x in lines]
    J.TextSentimentJudge.fit(texts, [x["sentiment"] for x in lines]).save(d / "judges" / "text_sentiment")
    J.SpeechSentimentJudge.fit([rng.standard_normal(6000).astype(np.float32) * (0.05 + 0.1 * (i % 3)) for i in range(6)],
                               [LABELS[i % 3] for i in range(6)]).save(d / "judges" / "speech_sentiment")
    cfg = VocoderConfig.preset("tiny", num_units=8, num_pitch=0, num_style=0, num_speakers=1, embedding_dim=8,
                               upsample_initial_channel=32, resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3, 5]],
                               duration_hidden=8)
    save_pretrained(UnitHifiGAN(cfg), d / "voc")
    save_pretrained(UnitHifiGAN(dataclasses.replace(cfg, num_units=64)), d / "voc64")  # speaks the LM's 64 units
    (d / "text.txt").write_text("".join(f"{t} and then some more words {k}\n" for k in range(30) for t in texts))
    # corpus import's inputs: a LibriSpeech-layout tree, a lhotse CutSet (corpus export's, checked by its own test)
    chap = d / "LibriSpeech" / "dev-clean" / "100" / "1"
    chap.mkdir(parents=True)
    for i in range(2):
        sf.write(chap / f"100-1-{i:04d}.flac", sf.read(d / "wavs" / f"u{i}.wav")[0], 16000, subtype="PCM_16")
    (chap / "100-1.trans.txt").write_text("".join(f"100-1-{i:04d} {lines[i]['text'].upper()}\n" for i in range(2)))
    assert run(["corpus", "export", "lhotse", "--manifest", manifest, "--out", d / "cuts.jsonl.gz"])[0] == 0
    from spiritlm.corpus.ctc import AsrConfig, CtcAsr  # an untrained CTC judge: the aligner's plumbing, not its quality

    J.AsrJudge(CtcAsr(AsrConfig(d_model=32, num_layers=1, num_heads=2, ffn_dim=64))).save(d / "aligner")
    (d / "ref.jsonl").write_text("".join(json.dumps({"id": x["id"], "sentiment": x["sentiment"]}) + "\n" for x in lines))
    (d / "pred.jsonl").write_text("".join(json.dumps({"id": x["id"], "pred": "positive"}) + "\n" for x in lines))
    return {"d": d, "manifest": manifest, "units": d / "units.jsonl", "tok": d / "tok", "lm": d / "lm", "judges": d / "judges",
            "voc": d / "voc", "voc64": d / "voc64", "text": d / "text.txt", "km": d / "km.pt",
            "librispeech": d / "LibriSpeech" / "dev-clean", "cuts": d / "cuts.jsonl.gz", "aligner": d / "aligner"}


def _lm(w):
    return ["--model", w["lm"], "--manifest", w["manifest"], "--units", w["units"], "--max_items", "2", "--seed", "0"]


def _align(w, o, *more):
    return ["corpus", "align", "--manifest", w["manifest"], "--aligner", w["aligner"], "--out", o, "--progress", "false",
            "--threads", "1", *more]


# name -> (argv for an output path, the file whose presence marks a finished output, relative to it)
COMMANDS = {
    "corpus import librispeech": (lambda w, o: ["corpus", "import", "librispeech", "--src", w["librispeech"], "--out", o],
                                  "manifest.jsonl"),
    "corpus import lhotse": (lambda w, o: ["corpus", "import", "lhotse", "--src", w["cuts"], "--out", o], "manifest.jsonl"),
    "corpus import folder": (lambda w, o: ["corpus", "import", "folder", "--src", w["d"] / "wavs", "--require_text", "false",
                                           "--out", o], "manifest.jsonl"),
    "corpus export lhotse": (lambda w, o: ["corpus", "export", "lhotse", "--manifest", w["manifest"], "--out", o], ""),
    "corpus align": (_align, ""),
    "corpus segment": (lambda w, o: ["corpus", "segment", "--manifest", w["manifest"], "--out", o, "--max_seconds", "0.85",
                                     "--progress", "false"], ""),
    "eval stsp-score": (lambda w, o: ["eval", "stsp-score", "--pred", w["d"] / "pred.jsonl", "--ref", w["d"] / "ref.jsonl",
                                      "--out", o], ""),
    "generate": (lambda w, o: ["generate", "--model", w["lm"], "--speech", "[Hu1][Hu2][Hu3]", "--output_modality", "speech",
                               "--vocoder", w["voc64"], "--max_new_tokens", "4", "--min_new_tokens", "4", "--do_sample", "false",
                               "--out", o], ""),
    "corpus synth": (lambda w, o: ["corpus", "synth", "--out", o, "--num_utts", "2", "--workers", "1", "--progress", "false"],
                     "manifest.jsonl"),
    "corpus text": (lambda w, o: ["corpus", "text", "--out", o, "--num_sentences", "20"], ""),
    "tokenizer dump-features": (lambda w, o: ["tokenizer", "dump-features", "--manifest", w["manifest"], "--out", o], "u0.npy"),
    "tokenizer assemble": (lambda w, o: ["tokenizer", "assemble", "--hubert", "mfcc", "--kmeans", w["km"], "--out", o], "config.json"),
    "tokenize": (lambda w, o: ["tokenize", "--manifest", w["manifest"], "--speech_tokenizer", w["tok"], "--out", o], ""),
    "data train-text-tokenizer": (lambda w, o: ["data", "train-text-tokenizer", "--text_file", w["text"], "--vocab_size", "400",
                                                "--num_hubert", "8", "--out", o], ""),
    "data build": (lambda w, o: ["data", "build", "--manifest", FIXTURES / "manifest.jsonl", "--units", FIXTURES / "units.jsonl",
                                 "--out", o, "--workers", "1", "--progress", "false", "--text_span_min", "3", "--text_span_max", "8",
                                 "--speech_span_min", "2", "--speech_span_max", "5"], "index.json"),
    "eval asr": (lambda w, o: ["eval", "asr", *_lm(w), "--shots", "1", "--max_new_tokens", "3", "--out", o], "metrics.json"),
    "eval ic": (lambda w, o: ["eval", "ic", *_lm(w), "--shots", "1", "--out", o], "metrics.json"),
    "eval tts": (lambda w, o: ["eval", "tts", *_lm(w), "--shots", "1", "--max_new_tokens", "4", "--out", o], "metrics.json"),
    "eval stsp": (lambda w, o: ["eval", "stsp", *_lm(w), "--judges", w["judges"], "--directions", "[t2t]", "--max_new_tokens_text", "3",
                                "--progress", "false", "--out", o], "metrics.json"),
    "eval zeroshot": (lambda w, o: ["eval", "zeroshot", "--model", w["lm"], "--sets", w["d"] / "sets", "--tasks", "storycloze",
                                    "--out", o], "metrics.json"),
    "vocoder synth": (lambda w, o: ["vocoder", "synth", "--vocoder", w["voc"], "--units", w["units"], "--out", o], "synth_report.json"),
    "vocoder eval": (lambda w, o: ["vocoder", "eval", "--vocoder", w["voc"], "--manifest", w["manifest"], "--units", w["units"],
                                   "--split", "train", "--max_utts", "2", "--control_pairs", "0", "--out", o], "metrics.json"),
    "vocoder train": (lambda w, o: ["vocoder", "train", "--manifest", w["manifest"], "--units", w["units"], "--speech_tokenizer", w["tok"],
                                    "--out", o, "--max_steps", "1", "--batch_size", "2", "--segment_units", "4", "--val_every", "1",
                                    "--save_every", "1"], "model.safetensors"),
    "eval judges": (lambda w, o: ["eval", "judges", "--manifest", w["manifest"], "--out", o, "--which", "[text-sentiment]"],
                    "text_sentiment/judge.json"),
}
SLOW = {"corpus synth", "vocoder eval", "eval stsp", "eval tts", "vocoder train"}

#: commands that write no output folder or file, or whose output rule lives in another test (why)
NOT_HERE = {
    "corpus check": "reads a manifest, writes nothing",
    "formats to-string|to-units|split": "print to standard output, write no file",
    "data inspect": "prints, writes nothing",
    "checkpoint info": "prints, writes nothing",
    "checkpoint export": "needs a training run; its rule is tested in test_checkpoint_export.py",
    "serve": "serves a page, writes no output",
    "corpus import hf": "the same rule as the other formats (corpus/cli.py); tested with its datasets in "
                        "test_corpus_import_hf.py (a finished import refused, --overwrite true, an interrupted one resumed)",
    "demo": "an orchestrator that resumes: a finished stage is skipped, never replaced (--fresh true starts over); test_demo.py",
    "tokenizer train": "its presets need more audio than these 6 tones (100 k-means clusters); the rule is "
                       "test_tokenizer_training.py::test_train_refuses_a_trained_tokenizer_unless_overwrite",
    "train": "an LM run resumes by itself and refuses changed settings (test_train.py); a finished run "
             "is extended, not replaced, by a larger --train.max_steps",
}


@pytest.fixture(scope="module")
def sets(world):
    """A StoryCloze written set for ``eval zeroshot --sets``."""
    import csv

    folder = world["d"] / "sets" / "storycloze"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "written.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["InputStoryid", "InputSentence1", "InputSentence2", "InputSentence3", "InputSentence4",
                    "RandomFifthSentenceQuiz1", "RandomFifthSentenceQuiz2", "AnswerRightEnding"])
        w.writerow(["x1", "it was good.", "it was fine.", "", "", "it was great.", "it was awful.", 1])
    return folder


#: commands whose --out must end in a suffix
OUT_NAME = {"corpus export lhotse": "out.jsonl.gz"}


def _marker(out: Path, marker: str) -> Path:
    return out / marker if marker else out


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in COMMANDS])
def test_second_run_is_refused_and_overwrite_replaces(name, world, sets, tmp_path):
    argv, marker = COMMANDS[name]
    out = tmp_path / OUT_NAME.get(name, "out")
    code, err = run(argv(world, out))
    assert code == 0, err
    done = _marker(out, marker)
    assert done.exists()
    before = done.stat().st_ino, done.read_bytes() if done.is_file() else None

    code, err = run(argv(world, out))
    assert code == 1
    assert str(out) in err and "--overwrite true" in err, err
    assert (done.stat().st_ino, done.read_bytes() if done.is_file() else None) == before  # untouched

    # an open descriptor keeps the old inode allocated: once the overwrite has removed the old
    # output, the filesystem could otherwise give its inode number to the new file (1 run in 2)
    held = os.open(done, os.O_RDONLY)
    try:
        code, err = run([*argv(world, out), "--overwrite", "true"])
    finally:
        os.close(held)
    assert code == 0, err
    assert done.exists() and done.stat().st_ino != before[0]  # a new file took its place


def test_every_command_is_covered_or_listed():
    """A new command must join COMMANDS above or NOT_HERE with its reason."""
    listed = set(COMMANDS) | {n for key in NOT_HERE for n in key.replace("|", ", ").split(", ")}
    listed |= {"formats to-string", "formats to-units", "formats split"}
    missing = []
    for group in cli.COMMAND_GROUPS:
        commands = cli.load_commands(group)
        names = [group] if callable(commands) else [f"{group} {sub}" for sub in commands]
        # `corpus import` is covered by its formats (`corpus import lhotse`, ...)
        missing += [n for n in names if n not in listed and not any(x.startswith(n + " ") for x in listed)]
    assert not missing, f"commands with no output rule test and no reason: {missing}"


# ---------------------------------------------------------------------------------------------
# the other halves of the rule: an interrupted run, a parent that is a file
# ---------------------------------------------------------------------------------------------


def test_an_interrupted_eval_is_redone_without_overwrite(world, tmp_path):
    """An eval folder without metrics.json (killed before the end) is written into by a plain rerun,
    and files the user keeps there survive."""
    argv, _ = COMMANDS["eval ic"]
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "predictions.jsonl").write_text('{"torn')  # what a killed run may leave
    code, err = run(argv(world, out))
    assert code == 0, err
    assert (out / "metrics.json").is_file() and (out / "notes.txt").read_text() == "mine"
    assert all(json.loads(ln) for ln in (out / "predictions.jsonl").read_text().splitlines())


def test_an_interrupted_atomic_output_leaves_nothing_and_reruns(world, tmp_path, monkeypatch):
    """vocoder synth builds OUT under a temporary name: a failure leaves no OUT, and the rerun needs no flag."""
    import soundfile

    argv, _ = COMMANDS["vocoder synth"]
    out = tmp_path / "out"
    real = soundfile.write
    calls = []

    def boom(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")
        return real(*a, **k)

    monkeypatch.setattr(soundfile, "write", boom)
    code, err = run(argv(world, out))
    assert code == 1 and "disk full" in err
    assert not out.exists() and not list(tmp_path.glob(".out.tmp-*"))
    monkeypatch.setattr(soundfile, "write", real)
    assert run(argv(world, out))[0] == 0


@pytest.mark.parametrize("name", ["eval ic", "vocoder synth", "corpus text", "tokenize", "tokenizer assemble", "corpus import folder",
                                  "corpus export lhotse", "corpus align", "corpus segment", "eval stsp-score", "generate"])
def test_an_output_under_a_file_is_one_line_naming_it(name, world, tmp_path):
    """Issue 18 item 13: ``--out FILE/sub`` was ``NotADirectoryError … (unexpected)`` or a traceback."""
    argv, _ = COMMANDS[name]
    blocker = tmp_path / "plain.txt"
    blocker.write_text("x")
    code, err = run(argv(world, blocker / OUT_NAME.get(name, "out")))
    assert code == 1
    assert f"{blocker}: is a file, not a folder" in err and "--out" in err and "unexpected" not in err, err


def test_a_corpus_too_small_for_the_tokenizer_preset_is_one_line(world, tmp_path):
    """Was ``ValueError: k-means: 62 frames for 100 clusters (unexpected; rerun with --debug …)``."""
    code, err = run(["tokenizer", "train", "--manifest", world["manifest"], "--out", tmp_path / "tok", "--preset", "tiny", "--threads", "1"])
    assert code == 1
    assert "frames for 100 clusters" in err and "--manifest" in err and "unexpected" not in err, err


def test_generate_into_an_output_dir_follows_the_rule(world, tmp_path):
    """``generate --output_dir DIR`` (no --out) writes generation_NN.wav: a second run is refused before any
    model loads; --overwrite true replaces them and removes the earlier run's files it did not rewrite."""
    argv, _ = COMMANDS["generate"]
    base = argv(world, tmp_path / "unused.wav")[:-2]  # without --out
    out = tmp_path / "gen"
    (out).mkdir()
    (out / "notes.txt").write_text("mine")
    assert run([*base, "--output_dir", out])[0] == 0
    first = out / "generation_00.wav"
    before = first.stat().st_ino, first.read_bytes()
    code, err = run([*base, "--output_dir", out])
    assert code == 1 and f"{out}: already holds the WAVs of an earlier run (generation_00.wav)" in err, err
    assert "--overwrite true" in err and "(--output_dir)" in err
    assert (first.stat().st_ino, first.read_bytes()) == before
    (out / "generation_07.wav").write_bytes(first.read_bytes())  # what a longer earlier generation left
    assert run([*base, "--output_dir", out, "--overwrite", "true"])[0] == 0
    assert first.stat().st_ino != before[0] and not (out / "generation_07.wav").exists()
    assert (out / "notes.txt").read_text() == "mine"  # not the command's: kept
    no_vocoder = [a for a, prev in zip(base, [None, *base]) if "--vocoder" not in (str(a), str(prev))]
    code, err = run([*no_vocoder, "--out", tmp_path / "x.wav"])
    assert code == 1 and "--out is for the vocoder's speech output: give --vocoder DIR too" in err, err


def test_an_interrupted_align_resumes_and_a_sharded_one_waits(world, tmp_path, monkeypatch):
    """corpus align is resumable like tokenize: OUT.parts/ of a killed or unfinished run is continued by a
    plain rerun (not refused, not redone); the finished OUT is refused."""
    import spiritlm.corpus.align as A

    out = tmp_path / "a.jsonl"
    real, calls = A.align_emission, []

    def killed_after_two(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # kill -INT after the first batch of two
        return real(*a, **k)

    monkeypatch.setattr(A, "align_emission", killed_after_two)
    code, err = run(_align(world, out, "--batch_size", "2"))
    assert code == 130 and not out.exists() and (tmp_path / "a.jsonl.parts").is_dir()
    calls.clear()
    monkeypatch.setattr(A, "align_emission", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    assert run(_align(world, out, "--batch_size", "2"))[0] == 0
    assert len(calls) == 4 and len(out.read_text().splitlines()) == 6  # the two done were kept, not redone
    assert not (tmp_path / "a.jsonl.parts").exists()
    code, err = run(_align(world, out))
    assert code == 1 and f"{out}: already exists" in err and "--overwrite true" in err

    sharded = tmp_path / "s.jsonl"
    shard = lambda i: _align(world, sharded, "--shard", i, "--num_shards", "2")  # noqa: E731
    assert run(shard(0))[0] == 0 and not sharded.exists()  # waits for shard 1
    calls.clear()
    assert run(shard(0))[0] == 0 and not calls  # a rerun of a finished shard: nothing to do, not refused
    assert run(shard(1))[0] == 0 and len(sharded.read_text().splitlines()) == 6
    code, err = run(shard(1))
    assert code == 1 and f"{sharded}: already exists" in err


def test_a_segment_run_that_skips_everything_leaves_no_output(world, tmp_path):
    """Every recording skipped: exit 1 and no OUT (an empty OUT would pass for finished and refuse the rerun)."""
    out = tmp_path / "seg.jsonl"
    code, err = run(["corpus", "segment", "--manifest", world["manifest"], "--out", out, "--max_seconds", "0.25",
                     "--progress", "false", "--allow_skips", "true"])
    assert code == 1 and "every recording was skipped" in err, err
    assert not out.exists()
    assert run(["corpus", "segment", "--manifest", world["manifest"], "--out", out, "--max_seconds", "0.85",
                "--progress", "false"])[0] == 0
