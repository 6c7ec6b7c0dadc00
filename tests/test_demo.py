"""`make demo`'s pipeline, shrunk (`--quick`): every stage runs and hands its output to the next."""

import json

import pytest

from spiritlm.recipes.demo import main


@pytest.mark.slow
def test_quick_demo_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    main(["--out", str(out), "--quick"])
    summary = json.loads((out / "demo_summary.json").read_text())
    assert summary["corpus"]["num_utts"] == 120
    metrics = summary["tokenizer_metrics"]
    for key in ("pnmi", "phone_purity", "f0_rmse_cents", "vuv_error", "codebook_perplexity", "style_purity"):
        assert isinstance(metrics[key], float)
    train = summary["data"]["train"]
    assert train["extra_text_documents"] == 2000
    assert all(train["subsets"][s]["documents"] > 0 for s in ("speech", "text", "interleaved"))
    assert set(summary["lm"]) == {"text", "interleaved"}
    printed = capsys.readouterr().out
    assert "[text]" in printed and "[speech]" in printed
    # a second run finds every stage done and skips it
    main(["--out", str(out), "--quick"])
    assert printed.count("$ spiritlm corpus synth") == 1 and "already done" in capsys.readouterr().out
