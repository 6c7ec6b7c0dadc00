"""STSP and TTS evaluations: metrics on hand-made cases, prompt construction, Meta's STSP layout, end-to-end runs on the tiny model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from spiritlm.errors import UserError
from spiritlm.evals import stsp as S
from spiritlm.evals import tts as T
from spiritlm.judges import LABELS
from spiritlm.judges import models as J


# ---------------------------------------------------------------------------------------------
# STSP metrics on hand-made cases
# ---------------------------------------------------------------------------------------------


def _rows(direction, gold, judged):
    return [{"direction": direction, "label": g, "judged": j} for g, j in zip(gold, judged)]


def test_stsp_accuracy_per_direction_and_average():
    rows = (
        _rows("t2t", ["positive", "negative", "neutral", "positive"], ["positive", "negative", "neutral", "negative"])  # 3/4
        + _rows("s2s", ["positive", "negative"], ["negative", "negative"])  # 1/2
        + _rows("t2s", ["neutral", "neutral", "positive"], ["neutral", "(empty)", "neutral"])  # 1/3
    )
    m = S.stsp_metrics(rows, seed=0, n_resamples=200)
    assert list(m) == ["accuracy_t2t", "accuracy_t2s", "accuracy_s2s", "accuracy_avg"]
    assert m["accuracy_t2t"]["value"] == pytest.approx(0.75) and m["accuracy_t2t"]["n"] == 4
    assert m["accuracy_s2s"]["value"] == pytest.approx(0.5)
    assert m["accuracy_t2s"]["value"] == pytest.approx(1 / 3, abs=1e-6)
    assert m["accuracy_avg"]["value"] == pytest.approx((0.75 + 0.5 + 1 / 3) / 3, abs=1e-6)
    assert m["accuracy_avg"]["directions"] == ["t2t", "t2s", "s2s"]
    # chance: judged labels independent of the prompts' labels
    # t2t: gold p=(.5,.25,.25) judged p=(.25,.5,.25) -> .5*.25 + .25*.5 + .25*.25
    assert m["accuracy_t2t"]["chance"] == pytest.approx(0.3125)
    assert m["accuracy_s2s"]["chance"] == pytest.approx(0.5)  # always "negative": right on the negative half
    for rec in m.values():
        lo, hi = rec["ci95"]
        assert lo <= rec["value"] <= hi


def test_independence_chance_is_a_third_for_balanced_prompts():
    gold = list(LABELS) * 4
    for judged in (["positive"] * 12, list(LABELS) * 4, ["neutral", "negative"] * 6):
        assert S.independence_chance(gold, judged) == pytest.approx(1 / 3)


# ---------------------------------------------------------------------------------------------
# Prompts
# ---------------------------------------------------------------------------------------------


def _item(i, label, with_halves=True):
    return S.StspItem(
        f"u{i}", label, text=f"text {i} words", speech=f"[Hu{i}][Hu{i + 1}]",
        halves={"text": (f"first{i}", f"second{i}"), "speech": (f"[Hu{i}]", f"[Hu{i + 50}]")} if with_halves else {},
    )


def test_stsp_prompts_in_each_direction():
    target, shot = _item(1, "positive"), _item(7, "negative")
    assert S.build_stsp_prompt("t2t", target) == "[Text]text 1 words"
    assert S.build_stsp_prompt("t2s", target) == "[Text]text 1 words[Speech]"
    assert S.build_stsp_prompt("s2t", target) == "[Speech][Hu1][Hu2][Text]"
    assert S.build_stsp_prompt("s2s", target) == "[Speech][Hu1][Hu2]"
    # a shot: the example's first half in the source modality, its second half in the target one
    ours = S.PROTOCOLS["ours"]
    assert S.build_stsp_prompt("t2s", target, [shot], ours) == "[Text]first7[Speech][Hu57][Text]text 1 words[Speech]"
    assert S.build_stsp_prompt("s2t", target, [shot], ours) == "[Speech][Hu7][Text]second7[Speech][Hu1][Hu2][Text]"
    assert S.build_stsp_prompt("t2t", target, [shot], ours) == "[Text]first7 second7[Text]text 1 words"
    assert S.build_stsp_prompt("s2s", target, [shot], ours) == "[Speech][Hu7][Hu57][Speech][Hu1][Hu2]"


def test_stsp_shots_are_k_balanced_seeded_and_never_the_target():
    pool = [_item(i, LABELS[i % 3]) for i in range(30)] + [_item(99, "positive", with_halves=False)]
    for target in ("u0", "u4", "u99"):
        shots = S.draw_balanced_shots(pool, 6, seed=3, target_id=target, need=["text", "speech"])
        assert len(shots) == 6 and target not in {s.id for s in shots}
        assert sorted(s.label for s in shots) == sorted(LABELS * 2)  # balanced: the shots do not hint at the label
        assert "u99" not in {s.id for s in shots}  # no halves: cannot be an example
        assert [s.id for s in S.draw_balanced_shots(pool, 6, seed=3, target_id=target, need=["text"])] == [s.id for s in shots]
    assert [s.id for s in S.draw_balanced_shots(pool, 6, 4, "u0", ["text"])] != [s.id for s in S.draw_balanced_shots(pool, 6, 3, "u0", ["text"])]
    assert S.draw_balanced_shots(pool, 0, 0, "u0", ["text"]) == []


def test_units_cut_at_a_word_boundary():
    row = {"hubert": " ".join(str(i) for i in range(50)), "pitch": " ".join(str(i) for i in range(25)), "style": "7 8"}
    a, b = S.split_units_at(row, 0.4)  # 10 HuBERT frames, 5 pitch frames, inside the first style second
    assert a["hubert"].split() == [str(i) for i in range(10)] and b["hubert"].split()[0] == "10"
    assert a["pitch"].split() == [str(i) for i in range(5)] and b["pitch"].split()[0] == "5"
    assert a["style"] == "7" and b["style"] == "7 8"
    words = [{"word": w, "start": s, "end": e} for w, s, e in (("a", 0.0, 0.2), ("b", 0.2, 0.9), ("c", 0.9, 1.2), ("d", 1.2, 2.0))]
    assert S._middle_boundary(words) == 2  # 0.9 s is the start nearest the middle (1.0 s)


def test_tts_prompt_has_k_shots_and_not_the_target():
    assert T.build_tts_prompt("a cat", [("a dog", "[Hu1][Hu2]"), ("a cow", "[Hu3]")]) == (
        "[Text]a dog[Speech][Hu1][Hu2][Text]a cow[Speech][Hu3][Text]a cat[Speech]")
    assert T.hubert_sequence("[St3][Pi2][Hu5][Hu5][Pi1][Hu7][Hu5]") == ["5", "7", "5"]


# ---------------------------------------------------------------------------------------------
# Meta's STSP layout
# ---------------------------------------------------------------------------------------------


def test_reads_meta_stsp_records(tmp_path):
    root = tmp_path / "stsp_data"
    (root / "emov" / "sam").mkdir(parents=True)
    sf.write(root / "emov" / "sam" / "a.wav", np.zeros(3200, np.float32), 16000)
    lines = [
        {"emotion": "angry", "wav_path": "emov/sam/a.wav", "split": "test", "speaker": "sam", "id": 4792320029370491913},
        {"emotion": "amused", "wav_path": "emov/sam/b.wav", "split": "test", "speaker": "sam", "id": -8754508989367964614, "asr": "oh that is funny"},
        {"emotion": "neutral", "wav_path": "emov/sam/c.wav", "split": "test", "speaker": "sam", "id": 3},
        {"emotion": "surprised", "wav_path": "emov/sam/d.wav", "id": 4},
    ]
    manifest = root / "records_emov_test.jsonl"
    manifest.write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert S.is_meta_stsp_manifest(manifest)
    units = {"4792320029370491913": {"hubert": "3 3 4"}, "3": {"hubert": "5 6"}}
    items, problems = S.read_meta_stsp(manifest, units=units)
    assert [(it.id, it.label) for it in items] == [("4792320029370491913", "negative"), ("-8754508989367964614", "positive"), ("3", "neutral")]
    assert items[0].speech == "[Hu3][Hu4]" and items[0].audio == str(root / "emov" / "sam" / "a.wav")
    assert items[1].text == "oh that is funny" and items[1].speech is None
    assert problems == [{"line": 4, "id": "4", "error": problems[0]["error"]}] and "surprised" in problems[0]["error"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"emotion": "sad", "id": 1}\n{oops\n')
    with pytest.raises(UserError, match=r"bad.jsonl:2: invalid JSON"):
        S.read_meta_stsp(bad)


def test_reads_meta_few_shot_files_with_wav_halves(tmp_path):
    class LengthTokenizer:  # records which samples a speech example was made of
        def encode_string(self, wav):
            return f"[Hu{len(wav)}][Hu{int(round(float(wav[0]) * 10))}]"

    data = tmp_path / "data"
    (data / "expresso").mkdir(parents=True)
    wav = np.concatenate([np.full(1000, 0.1), np.full(1001, 0.9)]).astype(np.float32)
    sf.write(data / "expresso" / "x.wav", wav, 16000, subtype="FLOAT")
    shots = data / "manifest" / "few_shot"
    shots.mkdir(parents=True)
    (shots / "t2t.jsonl").write_text(json.dumps({"prompt": "i love", "generation": "this place", "sentiment": "positive"}) + "\n")
    (shots / "s2t.jsonl").write_text(json.dumps({"prompt": "expresso/x.wav", "generation": "so sad", "sentiment": "negative"}) + "\n")
    (shots / "t2s.jsonl").write_text(json.dumps({"prompt": "oh well", "generation": "expresso/x.wav", "sentiment": "neutral"}) + "\n")
    pools = S.read_meta_few_shot(shots, LengthTokenizer())
    assert set(pools) == {"t2t", "s2t", "t2s"}
    assert pools["t2t"][0].label == "positive" and pools["t2t"][0].halves == {"text": ("i love", "this place")}
    target = S.StspItem("t", "negative", text="what a day", speech="[Hu5]")
    # the speech prompt is the first half of the samples, the speech continuation the second half
    # (Meta's protocol, the default: a newline after each example)
    assert S.build_stsp_prompt("s2t", target, pools["s2t"]) == "[Speech][Hu1000][Hu1][Text]so sad\n[Speech][Hu5][Text]"
    assert S.build_stsp_prompt("t2s", target, pools["t2s"]) == "[Text]oh well[Speech][Hu1001][Hu9]\n[Text]what a day[Speech]"
    with pytest.raises(UserError, match=r"t2s.jsonl:1: speech examples need a speech tokenizer"):
        S.read_meta_few_shot(shots)
    (shots / "t2t.jsonl").write_text('{"prompt": "a"}\n')
    with pytest.raises(UserError, match=r"t2t.jsonl:1: a few-shot line needs"):
        S.read_meta_few_shot(shots, LengthTokenizer())


def test_corpus_manifest_is_not_meta_layout(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text(json.dumps({"id": "a", "audio": "a.wav", "words": [], "sentiment": "positive"}) + "\n")
    assert not S.is_meta_stsp_manifest(p)


# ---------------------------------------------------------------------------------------------
# End to end on the tiny model with a tiny random vocoder
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from spiritlm.evals.common import EvalModel
    from spiritlm.generation import SpiritLM
    from fixtures import tiny_hf_llama
    from spiritlm.data.synthetic import toy_tokenizer, toy_utterances
    from spiritlm.vocoder import Vocoder, VocoderConfig
    from spiritlm.vocoder.api import save_pretrained
    from spiritlm.vocoder.model import UnitHifiGAN

    d = tmp_path_factory.mktemp("tiny")
    tok = toy_tokenizer(d / "tok", num_hubert=64)
    tiny_hf_llama(d / "lm", vocab_size=tok.vocab_size, tokenizer_model=d / "tok" / "tokenizer.model", max_position_embeddings=512)
    torch.manual_seed(0)
    cfg = VocoderConfig.preset("tiny", num_units=64, num_pitch=0, num_style=0, num_speakers=1, embedding_dim=8,
                               upsample_initial_channel=32, resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3, 5]],
                               duration_hidden=8)
    save_pretrained(UnitHifiGAN(cfg), d / "voc")
    model = EvalModel(lm=SpiritLM.from_pretrained(d / "lm"), vocoder=Vocoder.from_pretrained(d / "voc"), expressive=False, name="tiny")
    utts, units = toy_utterances(24, num_hubert=64)
    manifest = [{"id": u.id, "audio": str(d / f"{u.id}.wav"), "text": u.text, "sentiment": LABELS[i % 3],
                 "words": [{"word": w.word, "start": w.start, "end": w.end} for w in u.words],
                 "split": "train" if i < 18 else "test"} for i, u in enumerate(utts)]
    units = {k: {**v, "id": k} for k, v in units.items()}
    text_judge = J.TextSentimentJudge.fit([m["text"] for m in manifest], [m["sentiment"] for m in manifest])
    rng = np.random.default_rng(0)
    speech_judge = J.SpeechSentimentJudge.fit([rng.standard_normal(6000).astype(np.float32) * (0.05 + 0.1 * (i % 3)) for i in range(12)],
                                              [LABELS[i % 3] for i in range(12)])
    asr = J.AsrJudge(J.CtcAsr(J.AsrConfig(d_model=16, num_layers=1, num_heads=2, ffn_dim=32)))
    return {"model": model, "manifest": manifest, "units": units, "text": text_judge, "speech": speech_judge, "asr": asr,
            "lm_dir": d / "lm", "voc_dir": d / "voc"}


def test_stsp_end_to_end_writes_metrics_and_predictions(tiny, tmp_path):
    test = [m for m in tiny["manifest"] if m["split"] == "test"]
    train = [m for m in tiny["manifest"] if m["split"] == "train"]
    items, missing = S.items_from_manifest(test, tiny["units"], expressive=False)
    pool, _ = S.items_from_manifest(train, tiny["units"], expressive=False)
    assert missing == 0 and len(items) == 6 and all(it.speech and "speech" in it.halves for it in items)
    cfg = S.StspConfig(shots=3, seed=5, max_new_tokens_text=8, max_new_tokens_speech=20, protocol="ours")
    inputs = S.StspInputs(items, shot_pool=pool, text_judge=tiny["text"], speech_judge=tiny["speech"])
    res = S.run_stsp(tiny["model"], inputs, cfg, tmp_path / "a")
    m = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert m["task"] == "stsp"
    for d in S.DIRECTIONS + ("avg",):
        rec = m[f"accuracy_{d}"]
        assert set(rec) >= {"value", "ci95", "chance", "n"} and 0 <= rec["value"] <= 1
    assert m["accuracy_avg"]["n"] == 4 * 6 and m["skipped_directions"] == {}
    assert m["config"]["shots"] == 3 and m["config"]["seed"] == 5
    rows = [json.loads(x) for x in (tmp_path / "a" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 24 and rows == res.predictions
    test_ids = {it.id for it in items}
    for r in rows:
        assert set(r) >= {"id", "direction", "label", "shot_ids", "seed", "output", "judged", "score"}
        assert len(r["shot_ids"]) == 3 and r["id"] not in r["shot_ids"] and not test_ids & set(r["shot_ids"])
        assert r["score"] == float(r["judged"] == r["label"])
        if r["direction"].endswith("s"):
            assert r["output"] == "" or r["output"].startswith("[Hu")
        assert (r["judged"] == S.EMPTY) == (r["output"] == "")
    # accuracy recomputed from the predictions
    for d in S.DIRECTIONS:
        rs = [r for r in rows if r["direction"] == d]
        assert m[f"accuracy_{d}"]["value"] == pytest.approx(np.mean([r["score"] for r in rs]), abs=1e-6)
    # same seed, same files
    S.run_stsp(tiny["model"], inputs, cfg, tmp_path / "b")
    for name in ("metrics.json", "predictions.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_stsp_without_vocoder_skips_speech_outputs(tiny, tmp_path):
    from spiritlm.evals.common import EvalModel

    items, _ = S.items_from_manifest([m for m in tiny["manifest"] if m["split"] == "test"], tiny["units"], expressive=False)
    model = EvalModel(lm=tiny["model"].lm, vocoder=None, name="tiny")
    res = S.run_stsp(model, S.StspInputs(items, text_judge=tiny["text"], speech_judge=tiny["speech"]),
                     S.StspConfig(do_sample=False, max_new_tokens_text=6, protocol="ours"))
    assert res.metrics["skipped_directions"] == {"t2s": "no vocoder", "s2s": "no vocoder"}
    assert res.metrics["accuracy_avg"]["directions"] == ["t2t", "s2t"]
    with pytest.raises(UserError, match="ran no direction"):
        S.run_stsp(model, S.StspInputs(items), S.StspConfig(directions=("t2t",)))


def test_stsp_drops_shots_to_fit_the_context(tiny):
    items, _ = S.items_from_manifest([m for m in tiny["manifest"] if m["split"] == "test"], tiny["units"], expressive=False)
    pool, _ = S.items_from_manifest([m for m in tiny["manifest"] if m["split"] == "train"], tiny["units"], expressive=False)
    lm = tiny["model"].lm
    cfg = S.StspConfig(directions=("s2t",), shots=3, do_sample=False, max_new_tokens_text=10, protocol="ours")
    ours = S.PROTOCOLS["ours"]
    full = max(len(lm.tokenizer.encode(S.build_stsp_prompt("s2t", it, S.draw_balanced_shots(pool, 3, 0, it.id, ["speech", "text"]), ours),
                                       bos=True)) for it in items)
    saved = lm.config.max_seq_len
    try:
        lm.config.max_seq_len = full  # no room for 10 new tokens after the longest 3-shot prompt
        res = S.run_stsp(tiny["model"], S.StspInputs(items, shot_pool=pool, text_judge=tiny["text"]), cfg)
        assert len(res.predictions) == len(items) and res.metrics["shots_used"]["min"] < 3
        for r in res.predictions:
            it = next(i for i in items if i.id == r["id"])
            shots = [next(p for p in pool if p.id == sid) for sid in r["shot_ids"]]
            assert len(lm.tokenizer.encode(S.build_stsp_prompt("s2t", it, shots, ours), bos=True)) + 10 <= full or not shots
        lm.config.max_seq_len = 8  # not even a target fits
        with pytest.raises(UserError, match="every prompt is longer than the model's context"):
            S.run_stsp(tiny["model"], S.StspInputs(items, shot_pool=pool, text_judge=tiny["text"]), cfg)
    finally:
        lm.config.max_seq_len = saved


def test_stsp_counts_outputs_the_vocoder_refuses(tiny):
    from spiritlm.evals.common import EvalModel
    from spiritlm.vocoder import Vocoder, VocoderConfig
    from spiritlm.vocoder.model import UnitHifiGAN

    torch.manual_seed(0)  # an expressive vocoder cannot voice a base model's HuBERT-only output
    cfg = VocoderConfig.preset("tiny", num_units=64, num_pitch=4, num_style=4, num_speakers=1, embedding_dim=8,
                               upsample_initial_channel=32, resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3, 5]],
                               duration_hidden=8)
    model = EvalModel(lm=tiny["model"].lm, vocoder=Vocoder(UnitHifiGAN(cfg)), name="tiny")
    items, _ = S.items_from_manifest([m for m in tiny["manifest"] if m["split"] == "test"], tiny["units"], expressive=False)
    res = S.run_stsp(model, S.StspInputs(items, text_judge=tiny["text"], speech_judge=tiny["speech"]),
                     S.StspConfig(directions=("t2t", "t2s"), do_sample=False, max_new_tokens_text=4, max_new_tokens_speech=8, protocol="ours"))
    assert res.metrics["skipped_directions"]["t2s"].startswith("the vocoder refused every output: ")
    assert "pitch" in res.metrics["skipped_directions"]["t2s"]
    assert res.metrics["accuracy_avg"]["directions"] == ["t2t"]
    from spiritlm.generation.outputs import vocode_many

    got, errors = vocode_many(tiny["model"].vocoder, ["[Hu1][Hu2]", "[Hu999]", {"hubert": "3 3 4"}])
    assert sorted(got) == [0, 2] and len(errors) == 1 and "999" in errors[0]


def test_stsp_judges_hubert_only_outputs_with_the_vocoders_default_codes(tiny):
    from spiritlm.evals.common import EvalModel
    from spiritlm.vocoder import Vocoder, VocoderConfig
    from spiritlm.vocoder.model import UnitHifiGAN

    torch.manual_seed(0)  # the same expressive vocoder, now with stored default pitch/style codes
    cfg = VocoderConfig.preset("tiny", num_units=64, num_pitch=4, num_style=4, num_speakers=1, embedding_dim=8,
                               upsample_initial_channel=32, resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3, 5]],
                               duration_hidden=8, default_pitch=1, default_style=3)
    model = EvalModel(lm=tiny["model"].lm, vocoder=Vocoder(UnitHifiGAN(cfg)), name="tiny")
    items, _ = S.items_from_manifest([m for m in tiny["manifest"] if m["split"] == "test"], tiny["units"], expressive=False)
    res = S.run_stsp(model, S.StspInputs(items, text_judge=tiny["text"], speech_judge=tiny["speech"]),
                     S.StspConfig(directions=("t2s",), do_sample=False, max_new_tokens_text=4, max_new_tokens_speech=8, protocol="ours"))
    assert "t2s" not in res.metrics["skipped_directions"] and res.metrics["vocoder_errors"] == {}
    speech_rows = [r for r in res.predictions if r["output"]]
    assert speech_rows and res.metrics["vocoder_filled"] == {"t2s": len(speech_rows)}
    assert all(r["judged"] != S.EMPTY for r in speech_rows)


def test_tts_end_to_end_writes_metrics_and_predictions(tiny, tmp_path):
    test = [m for m in tiny["manifest"] if m["split"] == "test"]
    train = [m for m in tiny["manifest"] if m["split"] == "train"]
    cfg = T.TtsConfig(shots=2, max_new_tokens=30)
    inputs = T.TtsInputs(test, train, tiny["units"], asr_judge=tiny["asr"])
    res = T.run_tts(tiny["model"], inputs, cfg, tmp_path / "a")
    m = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert m["task"] == "tts"
    for key in ("cer", "resynth_cer", "unit_edit_rate"):
        assert set(m[key]) >= {"value", "ci95", "chance", "n"} and m[key]["n"] == 6
    assert m["cer"]["chance"] is not None and m["unit_edit_rate"]["chance"] is not None
    assert "judge_cer" not in m  # the toy targets have no audio files
    rows = [json.loads(x) for x in (tmp_path / "a" / "predictions.jsonl").read_text().splitlines()]
    train_ids = {t["id"] for t in train}
    assert len(rows) == 6
    for r, t in zip(rows, test):
        assert r["id"] == t["id"] and len(r["shot_ids"]) == 2 and set(r["shot_ids"]) <= train_ids
        assert all(tok.startswith("[Hu") for tok in r["output"].replace("]", "] ").split())
    total = sum(r["unit_errors"] for r in rows) / sum(r["units"] for r in rows)
    assert m["unit_edit_rate"]["value"] == pytest.approx(total, abs=1e-6)
    chars = sum(r["char_errors"] for r in rows) / sum(r["chars"] for r in rows)
    assert m["cer"]["value"] == pytest.approx(chars, abs=1e-6)
    T.run_tts(tiny["model"], inputs, cfg, tmp_path / "b")
    assert (tmp_path / "a" / "predictions.jsonl").read_bytes() == (tmp_path / "b" / "predictions.jsonl").read_bytes()


def test_tts_unit_edit_rate_of_the_reference_itself_is_zero(tiny):
    from spiritlm.evals.common import edit_counts

    ref = "[Hu3][Hu4][Hu4][Hu9]"
    assert edit_counts(" ".join(T.hubert_sequence(ref)), " ".join(T.hubert_sequence("[Hu3][Hu4][Hu9]")), "word") == (0, 3)
    assert edit_counts(" ".join(T.hubert_sequence(ref)), " ".join(T.hubert_sequence("[Hu3][Hu9]")), "word") == (1, 3)


def test_stsp_and_tts_commands_read_folders_and_write_outputs(tiny, tmp_path, capsys):
    from spiritlm.cli import main

    # durations consistent with the units (eval commands refuse units whose length is not the audio's)
    seconds = {str(r["id"]): len(r["hubert"].split()) / 25 for r in tiny["units"].values() if "id" in r}
    lines = [{**m, "sample_rate": 16000, "duration": seconds.get(str(m["id"]), 1.0), "speaker": "s0", "style": "neutral"}
             for m in tiny["manifest"]]
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(x) + "\n" for x in lines))
    units = tmp_path / "units.jsonl"
    units.write_text("".join(json.dumps(r) + "\n" for r in tiny["units"].values()))
    judges = tmp_path / "judges"
    tiny["text"].save(judges / "text_sentiment")
    tiny["speech"].save(judges / "speech_sentiment")
    tiny["asr"].save(judges / "asr")
    common = ["--model", str(tiny["lm_dir"]), "--manifest", str(manifest), "--units", str(units), "--judges", str(judges)]
    main(["eval", "stsp", *common, "--out", str(tmp_path / "stsp"), "--shots", "2", "--directions", "[t2t,s2t]",
          "--max_new_tokens_text", "5", "--progress", "false"])
    m = json.loads((tmp_path / "stsp" / "metrics.json").read_text())
    assert m["accuracy_avg"]["directions"] == ["t2t", "s2t"] and m["accuracy_t2t"]["n"] == 6
    assert "[eval stsp] accuracy_t2t=" in capsys.readouterr().out
    main(["eval", "tts", *common, "--vocoder", str(tiny["voc_dir"]), "--out", str(tmp_path / "tts"), "--shots", "1",
          "--max_new_tokens", "12"])
    m = json.loads((tmp_path / "tts" / "metrics.json").read_text())
    assert m["cer"]["n"] == 6 and m["config"]["asr_judge"] == str(judges / "asr")
    with pytest.raises(SystemExit):
        main(["eval", "stsp", *common[:4], "--judges", str(tmp_path / "nope"), "--out", str(tmp_path / "x")])
    assert "no such judges directory" in capsys.readouterr().err
