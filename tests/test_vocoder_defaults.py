"""An expressive vocoder fills a missing pitch/style stream with its stored default code.

A weak LM emits many speech outputs without ``[PiN]`` (or ``[StN]``) tokens; TTS and STSP used to
count them as vocoder failures. The vocoder now fills an absent stream with the most frequent
training code (``VocoderConfig.default_pitch`` / ``default_style``, stored by training), while
ids beyond the tables and unparsable input are still refused.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from spiritlm.errors import UserError
from spiritlm.vocoder import Vocoder, VocoderConfig
from spiritlm.vocoder.data import Utterance, most_frequent_codes
from spiritlm.vocoder.model import UnitHifiGAN


def _config(**kw) -> VocoderConfig:
    base = dict(num_units=20, num_pitch=6, num_style=4, num_speakers=2, embedding_dim=8, upsample_initial_channel=32,
                resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3, 5]], duration_hidden=8)
    base.update(kw)
    return VocoderConfig.preset("tiny", **base)


def _voc(**kw) -> Vocoder:
    torch.manual_seed(0)
    model = UnitHifiGAN(_config(**kw))
    with torch.no_grad():  # non-trivial audio from an untrained generator
        for name, p in model.named_parameters():
            if name.endswith("original0"):
                p.uniform_(0.5, 1.5)
    return Vocoder(model)


def test_missing_pitch_and_style_are_filled_with_the_stored_defaults():
    voc = _voc(default_pitch=4, default_style=2)
    s = "[Hu1][Hu5][Hu7]"  # a weak LM's output: HuBERT tokens only
    prepared = voc.prepare(s)
    assert prepared["filled"] == ["pitch", "style"]
    np.testing.assert_array_equal(prepared["pitch"], [4, 4, 4])
    np.testing.assert_array_equal(prepared["style"], [2, 2, 2])
    explicit = "[St2][Pi4][Hu1][Hu5][Hu7]"
    assert voc.prepare(explicit)["filled"] == []
    np.testing.assert_array_equal(voc.synthesize(s), voc.synthesize(explicit))
    np.testing.assert_array_equal(voc.decode(s), voc.synthesize(explicit))
    # pitch present, style absent: only style is filled, with the stored default (not Meta's 71/68/98)
    assert voc.prepare("[Pi3][Hu1][Hu5]")["filled"] == ["style"]
    np.testing.assert_array_equal(voc.synthesize("[Pi3][Hu1][Hu5]"), voc.synthesize("[St2][Pi3][Hu1][Hu5]"))
    # style present, pitch absent
    np.testing.assert_array_equal(voc.synthesize("[St1][Hu1][Hu5]"), voc.synthesize("[St1][Pi4][Hu1][Hu5]"))
    # a frame-rate dict without pitch/style (units of a base tokenizer): 640 samples per unit
    frames = {"hubert": "1 1 2 2 3"}
    assert voc.prepare(frames)["filled"] == ["pitch", "style"]
    np.testing.assert_array_equal(voc.synthesize(frames), voc.synthesize({"hubert": "1 1 2 2 3", "pitch": "4 4 4", "style": "2"}))


def test_invalid_input_is_still_refused():
    voc = _voc(default_pitch=4, default_style=2)
    for units, msg in [
        ("[Hu1][Hu25]", "id 25 is beyond the vocoder's 20 units"),
        ("[Pi9][Hu1]", "'pitch' stream: id 9 is beyond"),
        ("[St7][Hu1]", "'style' stream: id 7 is beyond"),
        ("no tokens here", "no speech tokens"),
        ({"hubert": "1 2", "pitch": "", "style": "1"}, "needs a non-empty 'pitch'"),  # present but empty: not filled
        ({"hubert": "1 x"}, "'x' is not an integer"),
    ]:
        with pytest.raises(UserError, match=msg.replace("[", r"\[")):
            voc.prepare(units)


def test_without_a_stored_pitch_the_vocoder_refuses_and_style_falls_back_to_metas_choice():
    voc = _voc(num_style=100)  # a folder written before defaults were stored (or Meta's)
    with pytest.raises(UserError, match="stores no default_pitch"):
        voc.prepare("[Hu1][Hu2]")
    assert voc.default_code("pitch") is None
    assert voc.default_code("style") == 71  # Meta's first common style, within the table
    assert _voc(num_style=16).default_code("style") == 0  # none of 71/68/98 fits a 16-style table
    np.testing.assert_array_equal(voc.prepare("[Pi1][Hu1][Hu2]")["style"], [71, 71])


def test_config_checks_and_round_trips_the_defaults(tmp_path):
    with pytest.raises(ValueError, match="default_pitch 6 is not a code of the 6-entry table"):
        _config(default_pitch=6)
    voc = _voc(default_pitch=5, default_style=0, harmonic_source=False)  # exported to Meta's layout below
    voc.save(tmp_path / "v")
    assert json.loads((tmp_path / "v" / "config.json").read_text())["default_pitch"] == 5
    again = Vocoder.from_pretrained(tmp_path / "v")
    assert (again.config.default_pitch, again.config.default_style) == (5, 0)
    # Meta's layout has no such keys: an export loads back without them (and refuses pitch-less input)
    voc.export_meta(tmp_path / "meta")
    assert Vocoder.from_pretrained(tmp_path / "meta").config.default_pitch is None


def test_most_frequent_codes_counts_units():
    def utt(pitch, style):
        n = len(pitch)
        return Utterance("x", np.zeros(n * 640, np.float32), np.zeros(n, np.int64), np.array(pitch), np.array(style), 0, "train")

    got = most_frequent_codes([utt([1, 1, 3], [0, 0, 0]), utt([3, 3, 2], [2, 2, 2]), utt([5], [2])])
    assert got == {"pitch": 3, "style": 2}
    assert most_frequent_codes([Utterance("x", np.zeros(640, np.float32), np.zeros(1, np.int64), None, None, 0, None)]) == {}


def test_training_stores_the_most_frequent_training_codes(tmp_path):
    from spiritlm.vocoder.data import load_utterances
    from spiritlm.vocoder.train import train_vocoder

    from fixtures import make_corpus, tiny_cfg

    manifest, units = make_corpus(tmp_path)
    train_vocoder(manifest, units, str(tmp_path / "run"), tiny_cfg(max_steps=1, save_every=0), progress=False)
    voc = Vocoder.from_pretrained(tmp_path / "run")
    utts, _ = load_utterances(manifest, units, splits=["train", None])
    want = most_frequent_codes(utts)
    assert (voc.config.default_pitch, voc.config.default_style) == (want["pitch"], want["style"])
    assert voc.synthesize("[Hu1][Hu2][Hu3]").size > 0


def test_stsp_and_tts_judge_outputs_without_pitch_tokens():
    from spiritlm.generation.outputs import vocode_many as vocode

    voc = _voc(default_pitch=4, default_style=2)
    got, errors = vocode(voc, ["[Hu1][Hu2]", "[Hu99]", "[Pi1][Hu3][Hu4]"])
    assert sorted(got) == [0, 2] and len(errors) == 1 and "99" in errors[0]
    np.testing.assert_allclose(got[0], voc.synthesize("[St2][Pi4][Hu1][Hu2]"), atol=1e-5)  # batched


def test_vocoder_resume_drops_metrics_records_after_its_checkpoint(tmp_path):
    """The vocoder recipe shares the LM recipe's MetricsLog: after a kill, the records written past
    the last checkpoint are dropped on resume instead of repeating their steps (issue 12 case 16)."""
    from fixtures import make_corpus, tiny_cfg

    from spiritlm import metrics_log
    from spiritlm import distributed
    from spiritlm.vocoder import train as VT

    assert VT.MetricsLog is metrics_log.MetricsLog and VT.Dist is distributed.Dist  # one copy of each
    manifest, units = make_corpus(tmp_path)
    quiet = dict(progress=False)
    run = tmp_path / "run"
    VT.train_vocoder(manifest, units, str(run), tiny_cfg(), stop_after=2, **quiet)
    with open(run / "metrics.jsonl", "a") as f:  # logged by the killed run after its last checkpoint
        f.write(json.dumps({"kind": "train", "step": 3, "loss_g": 99.0}) + "\n")
    VT.train_vocoder(manifest, units, str(run), tiny_cfg(), resume=True, **quiet)
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs if r["kind"] == "train"] == [1, 2, 3, 4]
    assert json.loads((run / "metrics.json").read_text())["train"]["3"]["loss_g"] != 99.0


def test_synth_voices_lines_without_pitch_and_counts_them(tmp_path):
    from spiritlm.cli import main

    _voc(default_pitch=4, default_style=2).save(tmp_path / "voc")
    units = tmp_path / "u.jsonl"
    units.write_text(json.dumps({"id": "a", "tokens": "[Hu1][Hu2][Hu3]"}) + "\n" + json.dumps({"id": "b", "tokens": "[St1][Pi2][Hu1]"}) + "\n")
    main(["vocoder", "synth", "--vocoder", str(tmp_path / "voc"), "--units", str(units), "--out", str(tmp_path / "w")])
    report = json.loads((tmp_path / "w" / "synth_report.json").read_text())
    assert (report["written"], report["skipped"], report["filled"]) == (2, 0, 1)
