"""evals.common: metrics on hand-made cases, bootstrap intervals, shots, inputs, output files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from spiritlm.errors import UserError
from spiritlm.evals.common import (
    EvalResult,
    bootstrap_ci,
    char_error_rate,
    draw_shots,
    edit_counts,
    load_manifest_items,
    metric,
    normalize_text,
    ratio_of_sums,
    speech_string,
    units_of,
    word_error_rate,
    write_eval_outputs,
)
from spiritlm.units_jsonl import load_units


def test_normalize_text():
    assert normalize_text("  Hello, World!  It's  ME. ") == "hello world it's me"
    assert normalize_text("set_alarm: 7-30") == "set alarm 7 30"
    assert normalize_text("'quoted'") == "quoted"


def test_known_wer_and_cer():
    refs = ["The cat sat.", "a dog"]
    hyps = ["the cat SIT", "a dog ran"]
    # 1 substitution in 3 words + 1 insertion over 2 words = 2 / 5
    assert word_error_rate(refs, hyps) == pytest.approx(0.4)
    assert edit_counts("a b c", "a c", "word") == (1, 3)  # one deletion
    # "abc" -> "abd": 1 substitution of 3 chars; "xy" -> "": 2 deletions of 2 chars
    assert char_error_rate(["abc", "xy"], ["abd", ""]) == pytest.approx(3 / 5)
    assert word_error_rate(["a b"], ["a b"]) == 0.0
    # an empty reference counts the hypothesis' words as errors over no words
    assert edit_counts("", "hello there", "word") == (2, 0)
    assert word_error_rate(["", "a b"], ["x", "a b"]) == pytest.approx(1 / 2)
    with pytest.raises(ValueError):
        word_error_rate(["a"], [])


def test_bootstrap_ci_contains_mean_and_is_seeded():
    rng = np.random.default_rng(0)
    values = (rng.random(200) < 0.7).astype(float)
    low, high = bootstrap_ci(values, seed=3)
    assert low < values.mean() < high
    m = values.mean()  # normal approximation: half-width 1.96 * sqrt(m (1 - m) / n)
    assert high - low == pytest.approx(2 * 1.96 * np.sqrt(m * (1 - m) / len(values)), rel=0.2)
    assert bootstrap_ci(values, seed=3) == (low, high)
    assert bootstrap_ci(values, seed=4) != (low, high)
    assert bootstrap_ci([1.0, 1.0, 1.0]) == (1.0, 1.0)
    assert all(np.isnan(bootstrap_ci([])))
    # ratio statistic on (errors, length) rows: the corpus error rate
    rows = [(1, 3), (1, 2), (0, 5), (4, 10)]
    assert ratio_of_sums(np.asarray(rows, dtype=float)) == pytest.approx(6 / 20)
    lo, hi = bootstrap_ci(rows, statistic=ratio_of_sums)
    assert lo <= 0.3 <= hi


def test_draw_shots_never_the_target():
    pool = [{"id": f"u{i}"} for i in range(20)]
    for t in range(20):
        shots = draw_shots(pool, 5, seed=0, target_id=f"u{t}")
        ids = [s["id"] for s in shots]
        assert len(ids) == 5 == len(set(ids)) and f"u{t}" not in ids
    assert draw_shots(pool, 5, 0, "u3") == draw_shots(list(pool), 5, 0, "u3")
    assert draw_shots(pool, 5, 0, "u3") != draw_shots(pool, 5, 1, "u3")
    assert len(draw_shots(pool[:4], 10, 0, "u1")) == 3


def test_speech_string_base_and_expressive():
    row = {"id": "a", "hubert": "5 5 7 7 7 9", "pitch": "1 1 2", "style": "3"}
    assert speech_string(row, expressive=False) == "[Hu5][Hu7][Hu9]"
    s = speech_string(row, expressive=True)
    assert s.startswith("[St3]") and "[Pi1]" in s and "[Pi2]" in s
    with pytest.raises(ValueError, match="lack pitch"):
        speech_string({"id": "b", "hubert": "1", "style": "3"}, expressive=True)


def _line(i, split, **kw):
    d = {"id": f"u{i}", "audio": f"a/u{i}.wav", "sample_rate": 16000, "duration": 1.0, "speaker": "s",
         "style": "neutral", "text": f"word {i}", "words": [], "split": split}
    d.update(kw)
    return json.dumps(d)


def test_manifest_and_units_readers(tmp_path):
    m = tmp_path / "m.jsonl"
    m.write_text("\n".join([_line(0, "train"), _line(1, "test"), _line(2, "test")]) + "\n")
    items = load_manifest_items(m, "test")
    assert [x["id"] for x in items] == ["u1", "u2"]
    assert items[0]["audio"] == str(tmp_path / "a" / "u1.wav")
    assert len(load_manifest_items(m)) == 3
    with pytest.raises(UserError, match="no utterance of split 'valid'"):
        load_manifest_items(m, "valid")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(_line(0, "train") + "\n{not json\n")
    with pytest.raises(UserError, match=r"bad.jsonl:2:"):
        load_manifest_items(bad)
    u = tmp_path / "u.jsonl"
    u.write_text(json.dumps({"id": "u1", "audio": "a/u1.wav", "hubert": "1 2"}) + "\n"
                 + json.dumps({"audio": str(tmp_path / "a" / "u2.wav"), "hubert": "3"}) + "\n")
    units = load_units(u)
    assert units_of(items[0], units)["hubert"] == "1 2"
    assert units_of(items[1], units)["hubert"] == "3"  # found by audio path
    assert units_of({"id": "zz"}, units) is None
    with pytest.raises(UserError, match="no such units file"):
        load_units(tmp_path / "missing.jsonl")


def test_write_eval_outputs_is_reproducible(tmp_path, capsys):
    def make():
        values = [1.0, 0.0, 1.0, 1.0]
        return EvalResult(
            task="toy",
            metrics={"accuracy": metric(np.mean(values), bootstrap_ci(values, seed=0), 0.5, len(values)),
                     "config": {"model": "m", "seed": 0}},
            predictions=[{"id": f"u{i}", "shot_ids": [], "seed": 0, "output": "x", "score": v} for i, v in enumerate(values)],
            throughput={"tokens_per_s": 123.4},
        )

    write_eval_outputs(tmp_path / "a", make())
    write_eval_outputs(tmp_path / "b", make())
    for name in ("metrics.json", "predictions.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    m = json.loads((tmp_path / "a" / "metrics.json").read_text())
    acc = m["accuracy"]
    assert m["task"] == "toy" and acc["value"] == 0.75 and acc["chance"] == 0.5 and acc["n"] == 4
    assert acc["ci95"][0] <= acc["value"] <= acc["ci95"][1]
    preds = [json.loads(x) for x in (tmp_path / "a" / "predictions.jsonl").read_text().splitlines()]
    assert [p["id"] for p in preds] == ["u0", "u1", "u2", "u3"]
    assert not [p for p in (tmp_path / "a").iterdir() if p.name.endswith(".tmp")]
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith("[eval toy] accuracy=0.7500 accuracy_ci95=") and "n=4" in out[0]
    assert "tokens_per_s=123.4" in out[0]
    assert metric(float("nan"), (0, 1), None, 0)["value"] is None  # NaN is written as null (valid JSON)
