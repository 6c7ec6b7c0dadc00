"""``spiritlm vocoder synth``: one WAV per line, bad lines reported with their number and skipped; API input checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from spiritlm.cli import main
from spiritlm.errors import UserError
from spiritlm.formats import string_to_units
from spiritlm.vocoder import Vocoder, VocoderConfig
from spiritlm.vocoder.api import save_pretrained
from spiritlm.vocoder.model import UnitHifiGAN


def tiny_config(**kw):
    base = dict(num_units=20, num_pitch=6, num_style=4, num_speakers=2, embedding_dim=8,
                upsample_initial_channel=64, resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3, 5]],
                duration_hidden=8)
    base.update(kw)
    return VocoderConfig.preset("tiny", **base)


def random_model(cfg) -> UnitHifiGAN:
    """An untrained generator with weight norms large enough for non-trivial audio.

    (HiFi-GAN's N(0, 0.01) initialisation gives an almost constant output before training.)
    """
    model = UnitHifiGAN(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("original0"):
                p.uniform_(0.5, 1.5)
            elif name.endswith("bias") and "duration" not in name:
                p.mul_(0.1)
    return model


@pytest.fixture(scope="module")
def voc_dir(tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("voc")
    save_pretrained(random_model(tiny_config()), d, speakers=["alice", "bob"])
    return d


@pytest.fixture(scope="module")
def voc(voc_dir):
    return Vocoder.from_pretrained(voc_dir)


GOOD = {"id": "a", "hubert": "1 1 2 3 3 3 4", "pitch": "1 2 3 4", "style": "2"}


def write_lines(path, lines):
    path.write_text("".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines))
    return path


def test_synth_writes_good_lines_and_skips_bad_ones(voc_dir, voc, tmp_path, capsys):
    units = write_lines(tmp_path / "units.jsonl", [
        GOOD,
        {"id": "b", "hubert": "1 2 99", "pitch": "1 2", "style": "0"},  # 2: unit beyond the table
        '{"id": "c", "hubert": ',  # 3: bad JSON
        {"id": "d", "hubert": "", "pitch": "", "style": ""},  # 4: empty
        {"id": "e", "hubert": "1 x 2", "pitch": "1", "style": "1"},  # 5: unparsable
        "",  # blank lines are ignored
        {"id": "f", "tokens": "[St1][Pi2][Hu3][Hu4][Pi5][Hu6]"},  # 7: token string, durations predicted
        {"id": "g", "hubert": "5 6", "pitch": "1", "style": "1", "speaker": "carol"},  # 8: its speaker is overridden by --speaker
        {"id": "a", "hubert": "5 6", "pitch": "1", "style": "1"},  # 9: duplicate id
        {"id": "../x", "hubert": "5 6", "pitch": "1", "style": "1"},  # 10: unsafe id
        {"id": "h", "hubert": "5 6 7 8", "pitch": "1 9", "style": "1"},  # 11: pitch code beyond the table
    ])
    out = tmp_path / "wavs"
    argv = ["vocoder", "synth", "--vocoder", str(voc_dir), "--units", str(units), "--out", str(out), "--speaker", "bob"]
    with pytest.raises(SystemExit) as exc:  # issue 18 item 11: skipped lines are an exit status of 1, as in tokenize
        main(argv)
    assert exc.value.code == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "7 of 10 lines skipped" in last and "--allow_skips true" in last, last
    main([*argv, "--allow_skips", "true", "--overwrite", "true"])
    captured = capsys.readouterr()
    assert sorted(p.name for p in out.glob("*.wav")) == ["a.wav", "f.wav", "g.wav"]
    for lineno, words in [(2, "99"), (3, "JSON"), (4, "empty"), (5, "'x'"), (9, "duplicate"), (10, "file name"), (11, "pitch")]:
        assert f"units.jsonl:{lineno}:" in captured.err and words in captured.err.split(f"units.jsonl:{lineno}:")[1].splitlines()[0]
    assert "wrote 3 of 10 lines" in captured.out and "7 skipped" in captured.out
    report = json.loads((out / "synth_report.json").read_text())
    assert report["written"] == 3 and report["skipped"] == 7 and [e["line"] for e in report["errors"]] == [2, 3, 4, 5, 9, 10, 11]
    wav, sr = sf.read(out / "a.wav", dtype="float32")
    assert sr == 16000 and wav.shape == (7 * 640,)
    ref = voc.synthesize({k: GOOD[k] for k in ("hubert", "pitch", "style")}, speaker="bob")
    np.testing.assert_allclose(wav, ref, atol=1 / 32768 + 1e-6)  # 16-bit PCM
    assert not list(out.glob(".*tmp*"))


def test_synth_line_speaker_and_dur_pred_flag(voc_dir, voc, tmp_path, capsys):
    units = write_lines(tmp_path / "u.jsonl", [
        {**GOOD, "speaker": "alice"}, {**GOOD, "id": "b", "speaker": 1}, {**GOOD, "id": "c", "speaker": "carol"},
    ])
    out = tmp_path / "o"
    main(["vocoder", "synth", "--vocoder", str(voc_dir), "--units", str(units), "--out", str(out), "--allow_skips", "true"])
    assert "u.jsonl:3: unknown speaker 'carol'; known: alice, bob" in capsys.readouterr().err
    assert not (out / "c.wav").exists()
    a, _ = sf.read(out / "a.wav", dtype="float32")
    b, _ = sf.read(out / "b.wav", dtype="float32")
    streams = {k: GOOD[k] for k in ("hubert", "pitch", "style")}
    np.testing.assert_allclose(a, voc.synthesize(streams, speaker=0), atol=1e-4)
    np.testing.assert_allclose(b, voc.synthesize(streams, speaker=1), atol=1e-4)
    assert np.abs(a - b).max() > 1e-3  # the speaker embedding matters
    # --dur_pred true on a frame-rate dict whose pitch is not per unit: every line is bad -> exit 1
    with pytest.raises(SystemExit) as exc:
        main(["vocoder", "synth", "--vocoder", str(voc_dir), "--units", str(units), "--out", str(out), "--dur_pred", "true",
              "--overwrite", "true"])
    assert exc.value.code == 1
    assert "every line was skipped" in capsys.readouterr().err
    assert (out / "a.wav").is_file()  # the failed run left the finished output as it was


def test_synth_exits_nonzero_when_everything_is_skipped(voc_dir, tmp_path, capsys):
    units = write_lines(tmp_path / "bad.jsonl", ["not json", {"id": "x", "hubert": "300"}])
    with pytest.raises(SystemExit) as exc:
        main(["vocoder", "synth", "--vocoder", str(voc_dir), "--units", str(units), "--out", str(tmp_path / "o")])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "every line was skipped" in err and err.strip().splitlines()[-1].startswith("spiritlm vocoder synth: error:")
    assert not (tmp_path / "o").exists()  # nothing half-made
    empty = write_lines(tmp_path / "empty.jsonl", ["", ""])  # issue 18 item 15: no empty output folder either
    with pytest.raises(SystemExit):
        main(["vocoder", "synth", "--vocoder", str(voc_dir), "--units", str(empty), "--out", str(tmp_path / "o")])
    assert "empty.jsonl: no lines (--units)" in capsys.readouterr().err and not (tmp_path / "o").exists()
    with pytest.raises(SystemExit):
        main(["vocoder", "synth", "--vocoder", str(tmp_path / "missing"), "--units", str(units), "--out", str(tmp_path / "o")])
    assert "vocoder not found" in capsys.readouterr().err


# -- issue 18 item 11: the skip rule of batch commands (as spiritlm tokenize) --------------------------
#    bad lines are skipped and counted; status 1 unless --allow_skips true; status 1 always when every line was


def _status(argv, capsys) -> tuple[int, str, str]:
    """``spiritlm ARGV``: (exit status, stdout, stderr's last line)."""
    from fixtures import run_cli

    code, out, err = run_cli(argv, capsys)
    lines = err.strip().splitlines()
    return code, out, lines[-1] if lines else ""


def test_synth_skip_rule(voc_dir, tmp_path, capsys):
    units = write_lines(tmp_path / "u.jsonl", [GOOD, {"id": "b", "hubert": "1 2 99"}, "{torn", {**GOOD, "id": "c"}])
    synth = ["vocoder", "synth", "--vocoder", voc_dir, "--units", units]
    code, _, last = _status([*synth, "--out", tmp_path / "strict"], capsys)
    assert code == 1 and "2 of 4 lines skipped" in last and "--allow_skips true" in last, last
    assert json.loads((tmp_path / "strict" / "synth_report.json").read_text())["skipped"] == 2  # counted
    code, printed, last = _status([*synth, "--out", tmp_path / "lenient", "--allow_skips", "true"], capsys)
    assert code == 0 and "wrote 2 of 4 lines" in printed and "2 skipped" in printed, (printed, last)
    assert sorted(p.name for p in (tmp_path / "lenient").glob("*.wav")) == ["a.wav", "c.wav"]
    bad = write_lines(tmp_path / "bad.jsonl", [{"id": "b", "hubert": "1 2 99"}, "{torn"])
    code, _, last = _status(["vocoder", "synth", "--vocoder", voc_dir, "--units", bad, "--out", tmp_path / "none",
                             "--allow_skips", "true"], capsys)
    assert code == 1 and "every line was skipped" in last, last  # --allow_skips does not make nothing a success
    assert not (tmp_path / "none").exists()


@pytest.fixture(scope="module")
def train_corpus(tmp_path_factory):
    from fixtures import make_corpus

    d = tmp_path_factory.mktemp("train_corpus")
    manifest, units = make_corpus(d)
    return manifest, [json.loads(ln) for ln in open(units)]


def _train_argv(manifest, units, out):
    return ["vocoder", "train", "--manifest", manifest, "--units", units, "--out", out, "--preset", "tiny", "--max_steps", "1",
            "--batch_size", "2", "--segment_units", "4", "--val_every", "1", "--save_every", "1", "--threads", "1"]


def test_train_skip_rule(train_corpus, tmp_path, capsys):
    manifest, lines = train_corpus  # u0-u3 train, u4 valid, u5 test
    units = write_lines(tmp_path / "u.jsonl", [*lines[:3], {**lines[3], "hubert": "1 2 x"}, *lines[4:], "{torn"])
    code, _, last = _status(_train_argv(manifest, units, tmp_path / "strict"), capsys)
    assert code == 1 and "2 units lines skipped" in last and "u.jsonl:4:" in last and "--allow_skips true" in last, last
    assert not (tmp_path / "strict").exists()  # refused before training: no run folder
    code, printed, last = _status([*_train_argv(manifest, units, tmp_path / "lenient"), "--allow_skips", "true"], capsys)
    assert code == 0, last
    assert "3 training utterances (2 lines skipped)" in printed and (tmp_path / "lenient" / "model.safetensors").is_file()
    bad = write_lines(tmp_path / "bad.jsonl", [{**ln, "hubert": "1 2 x"} for ln in lines])
    code, _, last = _status([*_train_argv(manifest, bad, tmp_path / "none"), "--allow_skips", "true"], capsys)
    assert code == 1 and "no usable utterance" in last and "6 line(s) skipped" in last, last
    assert not (tmp_path / "none").exists()


def test_train_counts_a_bad_line_of_the_validation_split(train_corpus, tmp_path, capsys):
    """The training pass reads only the train split's lines: a bad valid-split line was dropped from validation unseen."""
    manifest, lines = train_corpus
    units = write_lines(tmp_path / "u.jsonl", [*lines[:4], {**lines[4], "pitch": "1 99"}, lines[5]])
    code, _, last = _status(_train_argv(manifest, units, tmp_path / "run"), capsys)
    assert code == 1 and "1 units lines skipped" in last and "u.jsonl:5: pitch code 99" in last, last


# -- API input checks ----------------------------------------------------------------------------


def test_speaker_by_name_and_index(voc):
    u = {"hubert": "1 2 3", "pitch": "1 2", "style": "3"}
    np.testing.assert_array_equal(voc.synthesize(u, speaker="bob"), voc.synthesize(u, speaker=1))
    np.testing.assert_array_equal(voc.synthesize(u, speaker="1"), voc.synthesize(u, speaker=1))
    with pytest.raises(UserError, match="unknown speaker 'carol'; known: alice, bob"):
        voc.synthesize(u, speaker="carol")
    with pytest.raises(UserError, match="speaker 2 is beyond"):
        voc.synthesize(u, speaker=2)


def test_bad_inputs_raise_user_errors(voc):
    cases = [
        ({"hubert": "1 2 20", "pitch": "1 2", "style": "1"}, "id 20 is beyond the vocoder's 20 units"),
        ({"hubert": "1 2 3", "pitch": "1 2", "style": "4"}, "'style' stream: id 4 is beyond"),
        ({"hubert": "1 2 3"}, "no 'pitch' stream"),  # absent and no stored default_pitch
        ({"hubert": "1 2 3", "pitch": "", "style": "1"}, "needs a non-empty 'pitch'"),
        ({"hubert": " "}, "empty 'hubert'"),
        ({"pitch": "1"}, "no 'hubert'"),
        ({"hubert": "1 2 3 4 5 6 7 8 9 10", "pitch": "1", "style": "1"}, "'pitch' has 1 codes for 10 units"),
        ("the cat sat", "no speech tokens"),
        ("[St1][Pi2]", "no [HuN] tokens"),
        (42, "unit dict or a token string"),
    ]
    for units, msg in cases:
        with pytest.raises(UserError, match=msg.replace("[", r"\[").replace("]", r"\]")):
            voc.synthesize(units)


def test_lengths_and_defaults(voc):
    frames = {"hubert": "1 1 1 2 2 3 3 3 3", "pitch": "1 1 2 2 3", "style": "1"}
    assert voc.synthesize(frames).shape == (9 * 640,)  # no duration prediction for dicts
    s = "[St1][Pi1][Hu1][Hu2][Pi2][Hu3]"
    assert voc.synthesize(s, dur_pred=False).shape == (3 * 640,)
    log_d = voc.model.predict_durations(torch.tensor([[1, 2, 3]]))
    n = int(torch.clamp(torch.round(torch.exp(log_d) - 1), min=1).sum())
    assert voc.synthesize(s).shape == (n * 640,)
    assert voc.sample_rate == 16000
    np.testing.assert_array_equal(voc.decode(s), voc.synthesize(s))
    # decode follows Meta's decoder: a per-unit dict (what SpiritLM passes) gets durations,
    # a frame-rate dict (pitch not one code per unit) does not
    per_unit = string_to_units(s)
    np.testing.assert_array_equal(voc.decode(per_unit), voc.synthesize(s))
    assert voc.decode(frames).shape == (9 * 640,)
    with pytest.raises(UserError, match="deduplicated streams need --dur_pred true"):
        voc.decode(per_unit, dur_pred=False)  # per-unit pitch read as 12.5 Hz does not fit


def test_batch_equals_one_at_a_time(voc):
    items = [
        "[St1][Pi1][Hu1][Hu2][Pi2][Hu3][Hu9][Hu10][Pi5][Hu11][Hu1]",
        {"hubert": "1 1 1 2 2 3 3 3 3 7 7 8", "pitch": "1 1 2 2 3 3", "style": "1"},
        "[St3][Pi4][Hu7]",
        {"hubert": "4 5", "pitch": "0", "style": "2"},
        "[St2][Pi0][Hu19][Hu18][Hu17][Pi1][Hu16]",
    ]
    speakers = [0, "bob", 1, "alice", 1]
    batch = voc.synthesize_batch(items, speaker=speakers, batch_size=3)
    assert len(batch) == len(items)
    for item, spk, wav in zip(items, speakers, batch):
        one = voc.synthesize(item, speaker=spk)
        assert wav.shape == one.shape and wav.dtype == np.float32
        np.testing.assert_allclose(wav, one, atol=1e-5)


def test_base_vocoder_without_tables(tmp_path):
    torch.manual_seed(3)
    cfg = tiny_config(num_pitch=0, num_style=0, num_speakers=0, duration_predictor=False)
    voc = Vocoder(random_model(cfg))
    wav = voc.synthesize({"hubert": "1 2 3", "pitch": "9 9", "style": "99"})  # expressive streams ignored
    assert wav.shape == (3 * 640,)
    with pytest.raises(UserError, match="no duration predictor"):
        voc.synthesize("[Hu1][Hu2]")
    with pytest.raises(UserError, match="no speaker table"):
        voc.synthesize({"hubert": "1"}, speaker=1)
    voc.save(tmp_path / "v")
    again = Vocoder.from_pretrained(tmp_path / "v")
    np.testing.assert_array_equal(again.synthesize({"hubert": "1 2 3"}), wav)


# -- integration: SpeechTokenizer.decode, SpiritLM(vocoder=…), spiritlm generate --vocoder --------


def test_speech_tokenizer_decode_uses_the_vocoder(voc):
    from spiritlm.tokenizers.speech_tokenizer import SpeechTokenizer

    s = "[St1][Pi1][Hu1][Hu2][Pi2][Hu3]"
    tok = SpeechTokenizer(units=None, vocoder=voc)  # decode needs only the vocoder
    np.testing.assert_array_equal(tok.decode(s, speaker="bob"), voc.synthesize(s, speaker="bob"))
    with pytest.raises(ValueError, match="needs a vocoder"):
        SpeechTokenizer(units=None).decode(s)


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    from fixtures import tiny_hf_llama
    from spiritlm.data.synthetic import toy_tokenizer
    from spiritlm.text_tokenizer import SpiritTextTokenizer

    d = tmp_path_factory.mktemp("lm")
    toy_tokenizer(d, num_hubert=64)
    tok = SpiritTextTokenizer.load(d / "tokenizer.model")
    return tiny_hf_llama(tmp_path_factory.mktemp("hf"), vocab_size=tok.vocab_size, seed=5, tokenizer_model=d / "tokenizer.model")


@pytest.fixture(scope="module")
def base_voc_dir(tmp_path_factory):
    torch.manual_seed(4)
    d = tmp_path_factory.mktemp("base_voc")
    save_pretrained(random_model(tiny_config(num_units=64, num_pitch=0, num_style=0)), d, speakers=["alice", "bob"])
    return d


def test_spiritlm_with_vocoder_returns_audio(lm_dir, base_voc_dir):
    from spiritlm.generation import SpiritLM

    voc = Vocoder.from_pretrained(base_voc_dir)
    lm = SpiritLM.from_pretrained(lm_dir, vocoder=voc)
    out = lm.generate([("text", "the cat")], output_modality="speech", max_new_tokens=6, min_new_tokens=6, seed=0)
    assert len(out) == 1 and out[0].modality == "speech"
    wav = out[0].content
    assert isinstance(wav, np.ndarray) and wav.dtype == np.float32
    np.testing.assert_array_equal(wav, voc.synthesize(out[0].tokens))  # durations predicted for LM tokens


def test_generate_cli_writes_wav(lm_dir, base_voc_dir, tmp_path, capsys):
    out = tmp_path / "gen" / "x.wav"
    main(["generate", "--model", str(lm_dir), "--text", "the cat", "--output_modality", "speech",
          "--vocoder", str(base_voc_dir), "--out", str(out), "--max_new_tokens", "6", "--min_new_tokens", "6"])
    assert f"[speech] {out}" in capsys.readouterr().out
    wav, sr = sf.read(out, dtype="float32")
    assert sr == 16000 and wav.size > 0 and wav.size % 640 == 0
    assert not list(out.parent.glob(".*tmp"))
