"""End to end on the synthetic espeak corpus: synth -> random units -> build -> loaders -> inspect.

Slow (renders audio): run with ``pytest -m slow tests/test_data_e2e.py``.
"""

from __future__ import annotations

import json

import pytest
import torch

pytestmark = pytest.mark.slow


def test_synthetic_corpus_end_to_end(tmp_path, capsys):
    from spiritlm.cli import main
    from spiritlm.corpus.cli import synth
    from spiritlm.corpus.manifest import read_manifest
    from spiritlm.data import LoaderConfig, PackedLoader, ValidationLoader
    from spiritlm.data.synthetic import random_units
    from spiritlm.text_tokenizer import SpiritTextTokenizer

    corpus = tmp_path / "corpus"
    synth(out=str(corpus), num_utts=60, seed=0, workers=2, progress=False)
    utts = read_manifest(corpus / "manifest.jsonl")
    units = random_units(utts, tmp_path / "units.jsonl", seed=0)
    out = tmp_path / "tokens"
    main(["data", "build", "--manifest", str(corpus / "manifest.jsonl"), "--units", str(units), "--out", str(out),
          "--expressive", "true", "--group_words", "40", "--split", "train", "--progress", "false"])
    summary = json.loads((out / "summary.json").read_text())
    n_train = sum(u.split == "train" for u in utts)
    assert summary["utterances"] == n_train
    assert summary["subsets"]["speech"]["documents"] == n_train  # espeak durations match the unit counts
    assert summary["subsets"]["interleaved"]["documents"] >= 5
    tok = SpiritTextTokenizer.load(out / "tokenizer.model")
    assert tok.expressive and tok.vocab_size % 256 == 0

    cfg = LoaderConfig(str(out), seq_len=256, batch_size=4, seed=0)
    loader = PackedLoader(cfg)
    batches = [next(loader) for _ in range(6)]
    state = loader.state_dict()
    nxt = next(loader)
    again = PackedLoader(cfg)
    again.load_state_dict(state)
    assert torch.equal(next(again)["input_ids"], nxt["input_ids"])
    speech = torch.from_numpy(tok.speech_token_mask())
    for b in batches:
        assert b["input_ids"].max() < tok.vocab_size
        ids = b["input_ids"]
        sub = b["subset_ids"]
        names = b["subsets"]
        # text documents hold no speech token; speech documents no text piece
        assert not speech[ids[sub == names.index("text")]].any()
        text = torch.from_numpy(tok.text_token_mask())
        assert not text[ids[sub == names.index("speech")]].any()
    for subset in ("speech", "text", "interleaved"):
        assert len(list(ValidationLoader(cfg, subset))) >= 1

    capsys.readouterr()
    main(["data", "inspect", str(out), "--num_examples", "1", "--color", "never"])
    printed = capsys.readouterr().out
    assert "<<TEXT>>" in printed and "<<SPEECH>> [St" in printed
