"""Issue 12 (reliability): each case as a test that failed before its fix.

Nothing lost (torn lines, duplicate ids, atomic outputs), no silent garbage (bad unit values,
malformed speech prompts, units the tokenizer cannot produce, unusable audio), exit codes
scripts can trust, one-line errors in the words of the CLI's flags, no half-made outputs,
plain-word --help.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch

from spiritlm import cli
from spiritlm.errors import UserError

FIXTURES = Path(__file__).parent / "data" / "data_pipeline"
MANIFEST = FIXTURES / "manifest.jsonl"
UNITS = FIXTURES / "units.jsonl"
SMALL = ["--text_span_min", "3", "--text_span_max", "8", "--speech_span_min", "2", "--speech_span_max", "5"]


def run_cli(argv, capsys) -> tuple[int, str, str]:
    """Runs ``spiritlm ARGV`` in process; returns (exit status, stdout, stderr)."""
    code = 0
    try:
        cli.main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err


def one_error_line(err: str) -> str:
    """The error line of a failed command (the last line of stderr); asserts there is no traceback."""
    assert "Traceback" not in err, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert lines, "no error printed"
    return lines[-1]


# ---------------------------------------------------------------------------------------------
# 1. tokenize: resume over a torn line in the middle keeps every good line
# ---------------------------------------------------------------------------------------------


class FakeSpeechTokenizer:
    """``encode_streams`` of a base tokenizer: one unit per 640 samples, the utterance's length mod 7."""

    def encode_streams(self, wavs, speakers=None):
        return [{"hubert": np.full(max(1, len(w) // 640), len(w) % 7, dtype=np.int64)} for w in wavs]


def _wav_manifest(tmp_path: Path, n: int, bad: dict[int, np.ndarray] | None = None) -> Path:
    lines = []
    for i in range(n):
        wav = (bad or {}).get(i, np.sin(np.arange(1600 + 160 * i) / 9).astype(np.float32) * 0.1)
        path = tmp_path / f"u{i}.wav"
        sf.write(path, wav, 16000, subtype="FLOAT")
        lines.append({"id": f"u{i}", "audio": str(path)})
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return manifest


def test_tokenize_resume_keeps_good_lines_around_a_torn_middle_line(tmp_path):
    from spiritlm.tokenizers.tokenize_cli import tokenize_manifest

    manifest = _wav_manifest(tmp_path, 8)
    out = tmp_path / "units.jsonl"
    tok = FakeSpeechTokenizer()
    for shard in (0, 1):
        tokenize_manifest(str(manifest), tok, str(out), shard=shard, num_shards=2, progress=False)
    lines = out.read_text().splitlines(keepends=True)
    assert len(lines) == 8
    # shard 1's writer was killed while writing u3: its line is torn, and shard 0's lines follow it
    torn_at = [json.loads(x)["id"] for x in lines].index("u3")
    lines[torn_at] = lines[torn_at][: len(lines[torn_at]) // 2] + "\n"
    out.write_text("".join(lines))
    good_before = [x for i, x in enumerate(lines) if i != torn_at]

    rep = tokenize_manifest(str(manifest), tok, str(out), shard=1, num_shards=2, progress=False)
    assert rep.written == 1 and rep.already_done == 3 and rep.skipped == 0
    assert rep.torn_lines == 1
    after = out.read_text().splitlines(keepends=True)
    assert after[: len(lines)] == lines  # nothing deleted, not even the torn line (another writer may be live)
    for line in good_before:
        assert line in after
    ids = [json.loads(x)["id"] for x in after if _is_json(x)]
    assert sorted(ids) == [f"u{i}" for i in range(8)]


def test_tokenize_resume_after_a_torn_last_line_does_not_glue_lines(tmp_path):
    from spiritlm.tokenizers.tokenize_cli import tokenize_manifest

    manifest = _wav_manifest(tmp_path, 3)
    out = tmp_path / "units.jsonl"
    tok = FakeSpeechTokenizer()
    tokenize_manifest(str(manifest), tok, str(out), progress=False)
    text = out.read_text()
    last = text.splitlines()[-1]
    out.write_text(text[: len(text) - len(last) // 2 - 1])  # killed mid-line, no newline
    rep = tokenize_manifest(str(manifest), tok, str(out), progress=False)
    assert rep.written == 1 and rep.already_done == 2 and rep.torn_lines == 1
    good = [json.loads(x) for x in out.read_text().splitlines() if _is_json(x)]
    assert sorted(r["id"] for r in good) == ["u0", "u1", "u2"]


def _tokenize_shard(args):
    from spiritlm.tokenizers.tokenize_cli import tokenize_manifest

    manifest, out, shard = args
    return tokenize_manifest(manifest, FakeSpeechTokenizer(), out, shard=shard, num_shards=4, batch_size=1, progress=False).written


def test_shards_appending_to_one_file_at_once_write_whole_lines(tmp_path):
    import multiprocessing as mp

    manifest = _wav_manifest(tmp_path, 24)
    out = tmp_path / "units.jsonl"
    with mp.get_context("fork").Pool(4) as pool:
        written = pool.map(_tokenize_shard, [(str(manifest), str(out), k) for k in range(4)])
    assert sum(written) == 24
    recs = [json.loads(x) for x in out.read_text().splitlines()]  # every line whole
    assert sorted(r["id"] for r in recs) == sorted(f"u{i}" for i in range(24))


def test_a_torn_units_line_is_named_by_data_build(tmp_path):
    from spiritlm.units_jsonl import read_units

    units = tmp_path / "u.jsonl"
    units.write_text(json.dumps({"id": "a", "hubert": "1 2"}) + "\n" + '{"id": "b", "hub\n' + json.dumps({"id": "b", "hubert": "3"}) + "\n")
    with pytest.raises(UserError, match=r"u\.jsonl:2: invalid JSON .*torn"):
        read_units(units)


def _is_json(line: str) -> bool:
    try:
        json.loads(line)
        return True
    except json.JSONDecodeError:
        return False


# ---------------------------------------------------------------------------------------------
# 2. a units file with the same id twice
# ---------------------------------------------------------------------------------------------


def test_units_file_with_a_duplicate_id_is_refused_with_both_lines(tmp_path):
    from spiritlm.units_jsonl import read_units

    units = tmp_path / "u.jsonl"
    units.write_text(
        json.dumps({"id": "a", "hubert": "1 2"}) + "\n" + json.dumps({"id": "b", "hubert": "3"}) + "\n"
        + json.dumps({"id": "a", "hubert": "4 5"}) + "\n"
    )
    with pytest.raises(UserError, match=r"u\.jsonl:3: id 'a' already on line 1"):
        read_units(units)


def test_units_file_duplicate_reported_by_data_build_cli(tmp_path, capsys):
    units = tmp_path / "u.jsonl"
    lines = UNITS.read_text().splitlines()
    units.write_text("\n".join(lines + [lines[0]]) + "\n")
    code, _, err = run_cli(["data", "build", "--manifest", MANIFEST, "--units", units, "--out", tmp_path / "o",
                            "--workers", "1", "--progress", "false"], capsys)
    assert code == 1
    assert re.search(rf"u\.jsonl:{len(lines) + 1}: id '\S+' already on line 1", one_error_line(err))
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------------------------
# 4. atomic outputs: dump-features, data build
# ---------------------------------------------------------------------------------------------


def test_dump_features_redoes_a_truncated_npy_and_writes_atomically(tmp_path, capsys, monkeypatch):
    from spiritlm.tokenizers.cli import dump_features

    manifest = _wav_manifest(tmp_path, 3)
    out = tmp_path / "feats"
    dump_features(manifest=str(manifest), out=str(out), backend="mfcc")
    good = np.load(out / "u1.npy")
    (out / "u1.npy").write_bytes((out / "u1.npy").read_bytes()[:100])  # killed while writing
    capsys.readouterr()
    dump_features(manifest=str(manifest), out=str(out), backend="mfcc")
    printed = capsys.readouterr().out
    assert "1 written, 2 already there" in printed
    np.testing.assert_array_equal(np.load(out / "u1.npy"), good)
    assert sorted(p.name for p in out.iterdir()) == ["u0.npy", "u1.npy", "u2.npy"]

    # a crash while saving leaves no file under the final name
    calls = []

    def boom(f, arr, *a, **k):
        calls.append(f)
        f.write(b"\x93NUMPY partial")
        raise OSError("disk full")

    (out / "u2.npy").unlink()
    monkeypatch.setattr(np, "save", boom)
    with pytest.raises(OSError):
        dump_features(manifest=str(manifest), out=str(out), backend="mfcc")
    assert calls and not (out / "u2.npy").exists()
    assert sorted(p.name for p in out.iterdir()) == ["u0.npy", "u1.npy"]


def test_data_build_refuses_an_existing_output_without_overwrite(tmp_path, capsys):
    out = tmp_path / "d"
    argv = ["data", "build", "--manifest", MANIFEST, "--units", UNITS, "--out", out, "--workers", "1",
            "--vocab_size", "300", "--progress", "false", *SMALL]
    assert run_cli(argv, capsys)[0] == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    code, _, err = run_cli(argv + ["--seed", "5"], capsys)
    assert code == 1
    line = one_error_line(err)
    assert str(out) in line and "--overwrite true" in line
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # untouched, tokenizer.model included
    code, _, _ = run_cli(argv + ["--seed", "5", "--overwrite", "true"], capsys)
    assert code == 0
    assert json.loads((out / "summary.json").read_text())["seed"] == 5
    assert [p.name for p in tmp_path.iterdir()] == ["d"]  # no temporary folder left next to it


def test_overwrite_never_replaces_a_folder_that_is_not_such_an_output(tmp_path, capsys):
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    code, _, err = run_cli(["data", "build", "--manifest", MANIFEST, "--units", UNITS, "--out", precious,
                            "--overwrite", "true", "--workers", "1", "--progress", "false"], capsys)
    assert code == 1 and "not replacing it" in one_error_line(err)
    code, _, err = run_cli(["tokenizer", "train", "--manifest", MANIFEST, "--out", precious], capsys)
    assert code == 1 and "--overwrite true" in one_error_line(err)
    code, _, err = run_cli(["tokenizer", "train", "--manifest", MANIFEST, "--out", precious, "--overwrite", "true"], capsys)
    assert code == 1 and "not replacing it" in one_error_line(err)
    assert [p.name for p in precious.iterdir()] == ["thesis.tex"]


def test_data_build_overwrite_keeps_a_tokenizer_taken_from_the_output(tmp_path, capsys):
    out = tmp_path / "d"
    argv = ["data", "build", "--manifest", MANIFEST, "--units", UNITS, "--out", out, "--workers", "1",
            "--vocab_size", "300", "--progress", "false", *SMALL]
    assert run_cli(argv, capsys)[0] == 0
    tok_bytes = (out / "tokenizer.model").read_bytes()
    code, _, err = run_cli(argv + ["--overwrite", "true", "--text_tokenizer", out / "tokenizer.model"], capsys)
    assert code == 0, err
    assert (out / "tokenizer.model").read_bytes() == tok_bytes
    from spiritlm.data.shards import TokenDir

    assert TokenDir(out).tokenizer_path == out / "tokenizer.model"


# ---------------------------------------------------------------------------------------------
# 5. unit values that are not unit ids
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["abc", "-5", "1.5", "12a"])
def test_units_to_string_refuses_values_that_are_not_unit_ids(value):
    from spiritlm.formats import units_to_string

    with pytest.raises(ValueError, match=rf"hubert: '{re.escape(value)}' is not a unit id"):
        units_to_string({"hubert": f"1 2 {value} 3"})


@pytest.mark.parametrize("value", ["abc", "-5"])
def test_units_file_with_a_bad_value_names_file_and_line(tmp_path, value):
    from spiritlm.units_jsonl import read_units

    units = tmp_path / "u.jsonl"
    units.write_text(json.dumps({"id": "a", "hubert": "1 2"}) + "\n"
                     + json.dumps({"id": "b", "hubert": "3", "pitch": f"1 {value}", "style": "2"}) + "\n")
    with pytest.raises(UserError, match=rf"u\.jsonl:2: pitch: '{value}' is not a unit id"):
        read_units(units)


def test_formats_to_string_refuses_a_bad_unit_value(capsys):
    code, out, err = run_cli(["formats", "to-string", "--units", '{"hubert": "1 abc 2"}'], capsys)
    assert code == 1 and "[Huabc]" not in out
    line = one_error_line(err)
    assert "--units" in line and "'abc' is not a unit id" in line


def test_formats_to_string_names_the_stdin_line(capsys, monkeypatch):
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO('{"hubert": "1 2"}\n{"hubert": "1 -5"}\n'))
    code, out, err = run_cli(["formats", "to-string", "--units", "-"], capsys)
    assert code == 1 and out.splitlines() == ["[Hu1][Hu2]"]
    assert "<stdin>:2: hubert: '-5' is not a unit id" in one_error_line(err)


# ---------------------------------------------------------------------------------------------
# 6. malformed speech prompts
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["[Hu12][Hu7", "[Hu12] hello", "[Hu-3]", "[Hu12][Foo1]"])
def test_parse_speech_string_refuses_malformed_prompts(bad):
    from spiritlm.formats import parse_speech_string

    with pytest.raises(ValueError, match="not a speech token"):
        parse_speech_string(bad)


def test_parse_speech_string_accepts_tokens_and_spaces():
    from spiritlm.formats import parse_speech_string

    assert parse_speech_string(" [St3][Pi1] [Hu5][Hu7] ") == ["[St3]", "[Pi1]", "[Hu5]", "[Hu7]"]


def test_spiritlm_refuses_a_malformed_speech_prompt(text_tok):
    from spiritlm.formats import UnitFormatError

    with pytest.raises(UnitFormatError, match=r"'\[Hu7' is not a speech token"):
        _lm(text_tok).generate([("speech", "[Hu12][Hu7")], max_new_tokens=1)


def test_generate_malformed_speech_prompt_is_an_error_naming_the_flag(tmp_path):
    from fixtures import run_fresh as _run_fresh

    model = tmp_path / "model"
    model.mkdir()
    (r,) = _run_fresh([["generate", "--model", str(model), "--speech", "[Hu12][Hu7"]])
    assert r["code"] == 1
    line = one_error_line(r["err"])
    assert "--speech" in line and "[Hu7" in line
    assert not r["torch"]  # refused before the slow imports of the model (not timed: the machine may be loaded)


# ---------------------------------------------------------------------------------------------
# 7. the speech mask follows the units that exist
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def text_tok(tmp_path_factory):
    from spiritlm.text_tokenizer import SpiritTextTokenizer

    tok = SpiritTextTokenizer.train(["the cat sat on the mat", "a dog ran far away"] * 40, 300, num_hubert=501)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.model"
    tok.save(path)
    return SpiritTextTokenizer.load(path)


def _lm(tok, **kwargs):
    from spiritlm.generation import SpiritLM

    return SpiritLM(torch.nn.Linear(1, 1), SimpleNamespace(vocab_size=tok.vocab_size, max_seq_len=64), tok, **kwargs)


def test_speech_mask_follows_the_speech_tokenizer_units(text_tok):
    hubert = text_tok.speech_token_ids("hubert")
    stok = SimpleNamespace(num_units={"hubert": 100, "pitch": 0, "style": 0}, encode_string=lambda a: "")
    mask = _lm(text_tok, speech_tokenizer=stok).allowed_tokens("speech")
    assert mask[hubert[:100]].all() and not mask[hubert[100:]].any()
    assert not _lm(text_tok, speech_tokenizer=stok).allowed_tokens("arbitrary")[hubert[400]]
    assert _lm(text_tok).allowed_tokens("speech")[hubert[400]]  # no unit count known: the vocabulary's


def test_speech_mask_follows_the_units_the_data_was_built_from(text_tok, tmp_path):
    from spiritlm.generation import SpiritLM, speech_units_near

    (tmp_path / "tokenizer.model").write_bytes(text_tok.model_proto)
    (tmp_path / "speech_units.json").write_text(json.dumps({"hubert": 100, "pitch": 0, "style": 0}))
    assert speech_units_near(tmp_path / "tokenizer.model") == {"hubert": 100, "pitch": 0, "style": 0}
    lm = SpiritLM(torch.nn.Linear(1, 1), SimpleNamespace(vocab_size=text_tok.vocab_size, max_seq_len=64), text_tok,
                  num_units=speech_units_near(tmp_path / "tokenizer.model"))
    hubert = text_tok.speech_token_ids("hubert")
    assert not lm.allowed_tokens("speech")[hubert[400]] and lm.allowed_tokens("speech")[hubert[99]]


def test_data_build_records_the_units_it_saw(tmp_path):
    from spiritlm.data.build import build_dataset
    from spiritlm.interleave import InterleaveConfig

    summary = build_dataset(MANIFEST, UNITS, tmp_path / "d", interleave=InterleaveConfig(expressive=True),
                            workers=1, vocab_size=300)
    recs = [json.loads(x) for x in UNITS.read_text().splitlines() if x.strip()]
    expect = {s: max(int(v) for r in recs for v in r[s].split()) + 1 for s in ("hubert", "pitch", "style")}
    assert summary["speech_units"] == expect
    assert json.loads((tmp_path / "d" / "speech_units.json").read_text()) == expect


@pytest.mark.slow
def test_a_trained_run_generates_only_units_its_data_had(tmp_path, capsys):
    """data build (units 0..99 in a 501-slot vocabulary) -> train -> generate: never [Hu100] or above."""
    units = tmp_path / "u.jsonl"
    recs = [json.loads(x) for x in UNITS.read_text().splitlines() if x.strip()]
    for r in recs:
        r["hubert"] = " ".join(str(int(v) % 100) for v in r["hubert"].split())
    units.write_text("".join(json.dumps(r) + "\n" for r in recs))
    data = tmp_path / "data"
    code, _, err = run_cli(["data", "build", "--manifest", MANIFEST, "--units", units, "--out", data, "--workers", "1",
                            "--vocab_size", "300", "--progress", "false", *SMALL], capsys)
    assert code == 0, err
    run = tmp_path / "run"
    code, _, err = run_cli(["train", "--config", Path(__file__).resolve().parents[1] / "recipes/configs/tiny-interleaved.yaml",
                            "--model.init_from", "null", "--model.overrides", "{num_layers: 1, model_dim: 32, num_attn_heads: 2, num_key_value_heads: 1, ffn_inner_dim: 64}",
                            "--data.data_dir", data, "--data.val_dir", data, "--data.seq_len", "32", "--data.batch_size", "2",
                            "--train.output_dir", run, "--train.max_steps", "1", "--train.progress", "false",
                            "--optim.warmup_steps", "1"], capsys)
    assert code == 0, err
    from spiritlm.generation import SpiritLM

    for model_dir in (run, run / "hf"):
        lm = SpiritLM.from_pretrained(model_dir)
        assert lm.num_units == {"hubert": 100, "pitch": 0, "style": 0}
        hubert = lm.tokenizer.speech_token_ids("hubert")
        assert len(hubert) == 501
        mask = lm.allowed_tokens("speech")
        assert mask[hubert[:100]].all() and not mask[hubert[100:]].any()
    out = lm.generate([("text", "the cat")], output_modality="speech", max_new_tokens=30, min_new_tokens=30, seed=0,
                      temperature=5.0)
    ids = [int(t) for seg in out if seg.modality == "speech" for t in re.findall(r"\[Hu(\d+)\]", seg.tokens)]
    assert ids and max(ids) < 100


# ---------------------------------------------------------------------------------------------
# 8. one audio validator for corpus check and tokenize
# ---------------------------------------------------------------------------------------------


def _manifest_line(path: Path, n: int, sr: int = 16000) -> dict:
    d = n / sr
    return {"id": path.stem, "audio": str(path), "sample_rate": sr, "duration": d, "speaker": "s", "style": "x",
            "text": "hi", "words": [{"word": "hi", "start": 0.0, "end": d}]}


@pytest.mark.parametrize("kind", ["short", "nan", "inf"])
def test_corpus_check_rejects_audio_that_tokenize_rejects(tmp_path, kind, capsys):
    from spiritlm.audio import AudioError, load_audio

    n = 480 if kind == "short" else 3200  # 30 ms / 200 ms
    wav = np.zeros(n, np.float32)
    if kind != "short":
        wav[100] = np.nan if kind == "nan" else np.inf
    path = tmp_path / f"{kind}.wav"
    sf.write(path, wav, 16000, subtype="FLOAT")
    with pytest.raises(AudioError):
        load_audio(path)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps(_manifest_line(path, n)) + "\n")
    code, out, _ = run_cli(["corpus", "check", manifest], capsys)
    assert code == 1
    assert ("too short" if kind == "short" else "NaN/Inf") in out


# ---------------------------------------------------------------------------------------------
# 10. exit status after skips
# ---------------------------------------------------------------------------------------------


def test_tokenize_exits_nonzero_after_skipping_unless_allowed(tmp_path, capsys, monkeypatch):
    from spiritlm.tokenizers import speech_tokenizer

    monkeypatch.setattr(speech_tokenizer.SpeechTokenizer, "load", classmethod(lambda cls, d, device="cpu", precision="fp32": FakeSpeechTokenizer()))
    (tmp_path / "tok").mkdir()
    manifest = _wav_manifest(tmp_path, 3, bad={1: np.zeros(100, np.float32)})
    argv = ["tokenize", "--manifest", manifest, "--speech_tokenizer", tmp_path / "tok", "--out", tmp_path / "u.jsonl"]
    code, out, err = run_cli(argv, capsys)
    assert code == 1 and "2 written" in out
    assert "--allow_skips true" in one_error_line(err)
    assert len((tmp_path / "u.jsonl").read_text().splitlines()) == 2  # the good ones are kept
    code, _, _ = run_cli(argv + ["--allow_skips", "true"], capsys)
    assert code == 0


def test_data_build_exits_nonzero_without_speech_documents(tmp_path, capsys):
    units = tmp_path / "u.jsonl"
    units.write_text(json.dumps({"id": "nobody", "hubert": "1 2 3"}) + "\n")
    argv = ["data", "build", "--manifest", MANIFEST, "--units", units, "--out", tmp_path / "d", "--workers", "1",
            "--vocab_size", "300", "--progress", "false"]
    code, _, err = run_cli(argv, capsys)
    assert code == 1
    line = one_error_line(err)
    assert "no speech documents" in line and "--allow_skips true" in line
    assert not (tmp_path / "d").exists()
    code, _, err = run_cli(argv + ["--allow_skips", "true"], capsys)
    assert code == 0, err


# ---------------------------------------------------------------------------------------------
# 11. messages name CLI flags; common bad inputs end in one line naming the file (and line)
# ---------------------------------------------------------------------------------------------


PYTHON_WORDS = re.compile(r"(pass|give|set) \w+=|\(pass \w+\)|pass tokenizer_path|\(SpiritLM\(\w+=")


def test_messages_name_flags_not_python_arguments():
    root = Path(__file__).resolve().parent.parent
    offenders = []
    for path in list(root.glob("spiritlm/**/*.py")) + list(root.glob("tokenizers/*.py")) + list(root.glob("recipes/*.py")):
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if ("raise" in line or "Error(" in line or "print(" in line) and PYTHON_WORDS.search(line):
                offenders.append(f"{path.relative_to(root)}:{i}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_bad_manifest_line_is_one_line_naming_file_and_line(tmp_path, capsys):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(MANIFEST.read_text().splitlines()[0] + "\n{not json\n")
    code, _, err = run_cli(["data", "build", "--manifest", manifest, "--units", UNITS, "--out", tmp_path / "d"], capsys)
    assert code == 1 and f"{manifest}:2:" in one_error_line(err)
    code, _, err = run_cli(["tokenize", "--manifest", manifest, "--speech_tokenizer", tmp_path, "--out", tmp_path / "u.jsonl"], capsys)
    assert code == 1 and str(manifest) in one_error_line(err)


def test_missing_inputs_are_one_line_naming_the_flag(tmp_path, capsys):
    cases = [
        (["data", "build", "--manifest", tmp_path / "nope.jsonl", "--units", UNITS, "--out", tmp_path / "d"], "--manifest"),
        (["data", "build", "--manifest", MANIFEST, "--units", tmp_path / "nope.jsonl", "--out", tmp_path / "d"], "--units"),
        (["tokenize", "--manifest", MANIFEST, "--speech_tokenizer", tmp_path / "nope", "--out", tmp_path / "u.jsonl"], "--speech_tokenizer"),
        (["generate", "--model", tmp_path / "nope", "--text", "hi"], "--model"),
        (["data", "train-text-tokenizer", "--out", tmp_path / "m.model", "--text_file", tmp_path / "nope.txt"], "--text_file"),
        (["tokenizer", "train", "--manifest", MANIFEST, "--out", tmp_path / "nope_tok", "--preset", "nope"], "--preset"),
        (["corpus", "text", "--out", tmp_path / "t.txt", "--mix", '{"nope": 1}'], "--mix"),
    ]
    for argv, flag in cases:
        code, _, err = run_cli(argv, capsys)
        line = one_error_line(err)
        assert code == 1 and flag in line and "nope" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing made
    code, out, err = run_cli(["formats", "to-units", "[Hu1"], capsys)
    assert code == 1 and not out and "no well-formed [HuN] token" in one_error_line(err)


# ---------------------------------------------------------------------------------------------
# 12. generate checks its paths before the slow imports
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["--model", "--speech_tokenizer", "--vocoder", "--speech"])
def test_generate_checks_paths_first(tmp_path, flag):
    from fixtures import run_fresh as _run_fresh

    model = tmp_path / "model"
    model.mkdir()
    args = {"--model": str(model), "--text": "hi"}
    if flag == "--speech":
        args.pop("--text")
    args[flag] = str(tmp_path / "typo.wav" if flag == "--speech" else tmp_path / "typo")
    (r,) = _run_fresh([["generate", *[x for kv in args.items() for x in kv]]])
    assert r["code"] == 1
    line = one_error_line(r["err"])
    assert flag in line and "typo" in line
    assert not r["torch"], "the paths were checked after importing torch/fairseq2"


@pytest.mark.parametrize("args, flag", [(["--temperature", "-1"], "--temperature"), (["--top_p", "0"], "--top_p"),
                                        (["--max_new_tokens", "0"], "--max_new_tokens"),
                                        (["--output_modality", "audio"], "--output_modality")])
def test_generate_checks_sampling_flags_first(tmp_path, args, flag):
    from fixtures import run_fresh as _run_fresh

    (r,) = _run_fresh([["generate", "--model", str(tmp_path), "--text", "hi", *args]])
    assert r["code"] == 2 and flag in one_error_line(r["err"])
    assert not r["torch"]  # checked before the imports of torch, whatever the machine's load


# ---------------------------------------------------------------------------------------------
# 13. failed runs leave no half-made outputs
# ---------------------------------------------------------------------------------------------


def test_failed_data_build_leaves_nothing(tmp_path, capsys):
    from spiritlm.text_tokenizer import SpiritTextTokenizer

    small = tmp_path / "small.model"  # 64 HuBERT slots: the fixture's units do not fit
    SpiritTextTokenizer.train(["a b c"] * 50, 300, num_hubert=64).save(small)
    out = tmp_path / "deep" / "d"
    code, _, err = run_cli(["data", "build", "--manifest", MANIFEST, "--units", UNITS, "--out", out,
                            "--text_tokenizer", small, "--workers", "1", "--progress", "false"], capsys)
    assert code == 1 and "is beyond the 64 hubert units" in one_error_line(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.model"]


def test_data_build_clears_what_a_killed_build_left(tmp_path, capsys):
    stale = tmp_path / ".d.tmp-999999999"  # a build killed with -9: its process is gone
    (stale / "speech").mkdir(parents=True)
    code, _, err = run_cli(["data", "build", "--manifest", MANIFEST, "--units", UNITS, "--out", tmp_path / "d",
                            "--workers", "1", "--vocab_size", "300", "--progress", "false", *SMALL], capsys)
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_failed_tokenizer_train_leaves_nothing(tmp_path, capsys):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "a", "audio": str(tmp_path / "missing.wav"), "split": "train"}) + "\n")
    out = tmp_path / "tok"
    code, _, err = run_cli(["tokenizer", "train", "--manifest", manifest, "--out", out], capsys)
    assert code == 1
    one_error_line(err)
    assert not out.exists()


def test_tokenize_with_nothing_readable_leaves_no_output_file(tmp_path, capsys, monkeypatch):
    from spiritlm.tokenizers import speech_tokenizer

    monkeypatch.setattr(speech_tokenizer.SpeechTokenizer, "load", classmethod(lambda cls, d, device="cpu", precision="fp32": FakeSpeechTokenizer()))
    (tmp_path / "tok").mkdir()
    manifest = _wav_manifest(tmp_path, 2, bad={0: np.zeros(10, np.float32), 1: np.zeros(10, np.float32)})
    out = tmp_path / "sub" / "u.jsonl"
    code, _, err = run_cli(["tokenize", "--manifest", manifest, "--speech_tokenizer", tmp_path / "tok", "--out", out,
                            "--allow_skips", "true"], capsys)
    assert code == 1 and "every utterance" in one_error_line(err)
    assert not out.exists()  # no empty units file: only the list of what was skipped, and why
    assert [p.name for p in out.parent.iterdir()] == ["u.jsonl.errors.json"]
    assert json.loads((out.parent / "u.jsonl.errors.json").read_text())["skipped"] == 2


# ---------------------------------------------------------------------------------------------
# 14. help in plain words; interleaving defaults that suit the corpus
# ---------------------------------------------------------------------------------------------

RST = re.compile(r"``|:(class|func|meth|mod|attr|data):`")


@pytest.mark.parametrize("group", list(cli.COMMAND_GROUPS))
def test_help_has_no_restructuredtext(group, capsys):
    commands = cli.load_commands(group)
    for argv in [[group]] if callable(commands) else [[group, name] for name in commands]:
        code, out, _ = run_cli(argv + ["--help"], capsys)
        assert code == 0
        bad = [ln for ln in out.splitlines() if RST.search(ln)]
        assert not bad, f"spiritlm {' '.join(argv)} --help:\n" + "\n".join(bad)


def test_data_build_help_says_when_group_words_is_needed(capsys):
    code, out, _ = run_cli(["data", "build", "--help"], capsys)
    text = " ".join(out.split())
    assert "--group_words" in text and "short" in text and "too_short_to_interleave" in text


def _short_corpus(tmp_path: Path, n: int = 60) -> tuple[Path, Path]:
    """A manifest of short utterances (6 to 12 words, as the synthetic corpus) and random units for it."""
    import random

    rng = random.Random(0)
    lines, units = [], []
    for k in range(n):
        t, words = 0.1, []
        for _ in range(rng.randint(6, 12)):
            words.append({"word": rng.choice(["the", "cat", "sat", "on", "a", "mat", "dog", "ran"]), "start": round(t, 3),
                          "end": round(t + 0.3, 3)})
            t += 0.35
        duration = round(t + 0.2, 3)
        uid = f"u{k:03d}"
        lines.append({"id": uid, "audio": f"{uid}.wav", "sample_rate": 16000, "duration": duration, "speaker": f"s{k % 4}",
                      "style": "default", "text": " ".join(w["word"] for w in words), "words": words, "split": "train"})
        units.append({"id": uid, "hubert": " ".join(str(rng.randrange(100)) for _ in range(int(duration * 25)))})
    manifest, unit_file = tmp_path / "m.jsonl", tmp_path / "u.jsonl"
    manifest.write_text("".join(json.dumps(x) + "\n" for x in lines))
    unit_file.write_text("".join(json.dumps(x) + "\n" for x in units))
    return manifest, unit_file


def test_default_interleaving_suits_a_corpus_of_short_utterances(tmp_path, capsys):
    """`data build` with its defaults on short sentences puts most utterances in an interleaved document."""
    manifest, units = _short_corpus(tmp_path)
    code, _, err = run_cli(["data", "build", "--manifest", manifest, "--units", units, "--out", tmp_path / "d",
                            "--workers", "1", "--vocab_size", "300", "--progress", "false"], capsys)
    assert code == 0, err
    summary = json.loads((tmp_path / "d" / "summary.json").read_text())
    assert summary["interleave"]["group_words"] > 0
    assert summary["interleaved_utterances"] >= 0.9 * summary["utterances"], summary["subsets"]["interleaved"]
