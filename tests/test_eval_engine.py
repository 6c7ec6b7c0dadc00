"""Batched engine: left-padded greedy decoding = one at a time, batched scoring = unbatched, helpers."""

from __future__ import annotations

import pytest
import torch

from fairseq2.nn import BatchLayout

from spiritlm.evals.engine import Throughput, choose_by_likelihood, fit_shots, text_stop_ids
from spiritlm.generation import SpiritLM
from fixtures import tiny_hf_llama
from spiritlm.data.synthetic import toy_tokenizer

PROMPTS = [
    "[Text]the cat",
    "[Text]a dog saw the river and my friend carried a small boat near the park",
    "[Speech][Hu3][Hu7][Hu9][Hu0][Hu12][Hu5][Hu5][Hu40][Text]",
    "[Text]her sister liked[Speech]",
    "[Text]x",
    "[Speech][Hu1][Hu2][Hu3][Hu4][Hu5][Hu6][Hu7][Hu8][Hu9][Hu10][Hu11][Hu12][Hu13][Text]the old man",
]


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    tok = toy_tokenizer(d, num_hubert=64)
    hf = tiny_hf_llama(tmp_path_factory.mktemp("hf"), vocab_size=tok.vocab_size, seed=5,
                       tokenizer_model=d / "tokenizer.model")
    return SpiritLM.from_pretrained(hf)


@pytest.fixture(scope="module")
def prompts(lm):
    return [lm.tokenizer.encode(t, bos=True) for t in PROMPTS]


def test_prompts_have_mixed_lengths(prompts):
    lengths = [len(p) for p in prompts]
    assert min(lengths) <= 4 and max(lengths) >= 40  # real left padding happens


@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_greedy_batch_equals_one_at_a_time(lm, prompts, batch_size):
    masks = [lm.allowed_tokens("text"), None, lm.allowed_tokens("text"), lm.allowed_tokens("speech"), None,
             lm.allowed_tokens("arbitrary")]
    one = [lm.generate_ids(p, max_new_tokens=25, allowed=m, do_sample=False) for p, m in zip(prompts, masks)]
    batch = lm.generate_batch_ids(prompts, allowed=masks, max_new_tokens=25, batch_size=batch_size)
    assert batch == one
    assert lm.last_stats.kind == "generate" and lm.last_stats.sequences == len(prompts)
    assert lm.last_stats.new_tokens == sum(len(o) for o in one) and lm.last_stats.tokens_per_s > 0


def test_rows_stop_independently(lm, prompts):
    free = lm.generate_batch_ids(prompts, max_new_tokens=25)
    # stop each row at a token it emits at a different step: rows leave the batch at different times
    stops = [[out[min(3 + 4 * i, len(out) - 1)]] for i, out in enumerate(free)]
    got = lm.generate_batch_ids(prompts, max_new_tokens=25, stop_ids=stops, batch_size=4)
    for out, stop, g in zip(free, stops, got):
        cut = out.index(stop[0]) + 1
        assert g == out[:cut]
    assert len({len(g) for g in got}) > 2
    # one shared stop list, and the per-row budget from max_seq_len
    long_prompt = prompts[0] * 40
    room = lm.config.max_seq_len - len(long_prompt)
    assert 0 < room < 25
    res = lm.generate_batch_ids([long_prompt, prompts[1]], max_new_tokens=25, stop_ids=[], stop_at_eos=False)
    assert len(res[0]) == room and len(res[1]) == 25


def test_decoder_refuses_a_model_it_does_not_reimplement(lm, prompts):
    """A structural change (as a fairseq2 upgrade could bring) fails loudly instead of drifting."""
    import copy

    from spiritlm.generation import UnsupportedModelError
    from fairseq2.models.transformer import TransformerNormOrder

    changed = copy.deepcopy(lm)
    changed.model.decoder.layers[1].norm_order = TransformerNormOrder.POST
    with pytest.raises(UnsupportedModelError, match="layer 1 is not pre-norm"):
        changed.generate_batch_ids(prompts[:1], max_new_tokens=2)
    with pytest.raises(UnsupportedModelError):
        changed.score_continuations(prompts[:1], [[5]])


def test_cached_decoding_equals_fairseq2s_own_forward(lm, prompts):
    """The decoder's cache and positions against fairseq2's full forward (``use_cache=False``),
    batched and with rows leaving the batch at different steps."""
    free = lm.generate_batch_ids(prompts, max_new_tokens=15)
    stops = [[out[min(2 + i, len(out) - 1)]] for i, out in enumerate(free)]
    for kw in ({}, {"stop_ids": stops}, {"do_sample": True, "seed": 4, "temperature": 1.3}):
        assert lm.generate_batch_ids(prompts, max_new_tokens=15, use_cache=False, **kw) == \
            lm.generate_batch_ids(prompts, max_new_tokens=15, **kw)


def test_sampling_is_per_row_seeded(lm, prompts):
    kw = dict(max_new_tokens=20, do_sample=True, temperature=1.0, top_p=0.95, seed=11)
    a = lm.generate_batch_ids(prompts, batch_size=2, **kw)
    b = lm.generate_batch_ids(prompts, batch_size=16, **kw)
    assert a == b
    one = [lm.generate_ids(p, max_new_tokens=20, do_sample=True, temperature=1.0, top_p=0.95, seed=11 + i)
           for i, p in enumerate(prompts)]
    assert a == one
    assert a != lm.generate_batch_ids(prompts, **{**kw, "seed": 12})


def test_min_new_tokens_in_batch(lm, prompts):
    eos = lm.tokenizer.eos_id
    allowed = torch.zeros(lm.config.vocab_size, dtype=torch.bool)
    allowed[[eos, 10, 11]] = True
    free = lm.generate_batch_ids(prompts, allowed=allowed, max_new_tokens=12, do_sample=True, temperature=3.0, seed=0)
    forced = lm.generate_batch_ids(prompts, allowed=allowed, max_new_tokens=12, do_sample=True, temperature=3.0,
                                   seed=0, min_new_tokens=6)
    assert any(len(f) < 6 and f[-1] == eos for f in free)
    assert all(eos not in f[:6] and len(f) >= 6 for f in forced)


def test_generate_batch_matches_generate(lm):
    inputs = [[("text", "the cat saw")], [("speech", "[Hu3][Hu9][Hu9][Hu4]"), ("text", "a")], "my friend"]
    modalities = ["speech", "text", "arbitrary"]
    got = lm.generate_batch(inputs, modalities, max_new_tokens=15, do_sample=False)
    for inp, m, outs in zip(inputs, modalities, got):
        ref = lm.generate(inp, output_modality=m, max_new_tokens=15, do_sample=False)
        assert [(o.modality, o.content) for o in outs] == [(o.modality, o.content) for o in ref]
    assert all(o.modality == "speech" for o in got[0])


def test_bad_prompts_raise(lm, prompts):
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        lm.generate_batch_ids([prompts[0], []])
    with pytest.raises(ValueError, match="no room"):
        lm.generate_batch_ids([prompts[0] * 200])
    with pytest.raises(ValueError, match="masks for"):
        lm.generate_batch_ids(prompts, allowed=[None])


def reference_scores(lm, prompt, cont):
    ids = torch.tensor([list(prompt) + list(cont)])
    logp = lm.model(ids, BatchLayout.of(ids))[0].float().log_softmax(-1)
    return [logp[len(prompt) - 1 + j, cont[j]].item() for j in range(len(cont))]


def test_scoring_batched_equals_unbatched_and_reference(lm, prompts):
    tok = lm.tokenizer
    conts = [tok.encode("the cat saw"), tok.encode("[Hu3][Hu4]"), [], tok.encode("a dog and a bird"), tok.encode("the"),
             tok.encode("[Speech][Hu9]")]
    # a shared prompt with several candidates, too
    ps = prompts + [prompts[1]] * 3
    cs = conts + [tok.encode("the river"), tok.encode("the market"), tok.encode("an apple")]
    one = lm.score_continuations(ps, cs, batch_size=1)
    many = lm.score_continuations(ps, cs, batch_size=4)
    for a, b, p, c in zip(one, many, ps, cs):
        assert len(a.token_logprobs) == len(c) == len(b.token_logprobs)
        assert a.sum_logprob == pytest.approx(b.sum_logprob, abs=1e-4)
        assert a.token_logprobs == pytest.approx(b.token_logprobs, abs=1e-4)
        assert a.token_logprobs == pytest.approx(reference_scores(lm, p, c), abs=1e-4)
        assert a.sum_logprob == pytest.approx(sum(a.token_logprobs), abs=1e-5)
        assert all(x <= 0 for x in a.token_logprobs)
    assert one[2].sum_logprob == 0.0 and one[2].token_logprobs == []
    with pytest.raises(ValueError, match="prompts but"):
        lm.score_continuations(ps, cs[:-1])


def test_choose_by_likelihood_picks_the_highest(lm, prompts):
    tok = lm.tokenizer
    cands = [tok.encode("the river"), tok.encode("a small boat"), tok.encode("[Hu5]")]
    best, table = choose_by_likelihood(lm, prompts[:3], cands, batch_size=4)
    for b, row, p in zip(best, table, prompts[:3]):
        sums = [sum(reference_scores(lm, p, c)) for c in cands]
        assert row == pytest.approx(sums, abs=1e-4)
        assert b == max(range(3), key=lambda j: sums[j])
    best_n, table_n = choose_by_likelihood(lm, prompts[:1], cands, normalize=True)
    assert table_n[0] == pytest.approx([s / len(c) for s, c in zip(table[0], cands)], abs=1e-4)


def test_fit_shots():
    assert fit_shots([10, 10, 10], fixed_length=20, max_seq_len=60, reserve=5) == 3
    assert fit_shots([10, 10, 10], fixed_length=20, max_seq_len=50, reserve=5) == 2
    assert fit_shots([30, 1], fixed_length=20, max_seq_len=50, reserve=5) == 0  # in order: a long first shot blocks
    assert fit_shots([], fixed_length=20, max_seq_len=50, reserve=5) == 0


def test_fit_prompt_is_the_joined_prompt_with_the_most_shots_that_fit(lm):
    """One few-shot assembler for asr/ic/tts/stsp: piecewise ids = the joined string's ids, the
    longest prefix of shots that leaves the reserve free, and the lone target when none fits."""
    from spiritlm.evals.prompts import fit_prompt, join_prompt, render_pair

    tok = lm.tokenizer
    shots = [render_pair("text", "i hate", "text", "this rain", inner_markers=True),
             render_pair("speech", "[Hu1][Hu2]", "text", "the old man"), render_pair("text", "a dog", "speech", "[Hu3]")]
    target, alone = "[Text]what a lovely day[Text]", "[Text]what a lovely day"
    full, k = fit_prompt(tok, shots, target, max_len=10_000, reserve=5, separator="\n", alone=alone)
    assert k == 3 and full == tok.encode(join_prompt(shots, target, "\n"), bos=True)
    two = len(tok.encode(join_prompt(shots[:2], target, "\n"), bos=True))
    for max_len, want in ((two + 5, 2), (two + 4, 1)):
        ids, k = fit_prompt(tok, shots, target, max_len=max_len, reserve=5, separator="\n", alone=alone)
        assert k == want and ids == tok.encode(join_prompt(shots[:k], target, "\n"), bos=True)
    ids, k = fit_prompt(tok, shots, target, max_len=3, reserve=5, separator="\n", alone=alone)
    assert k == 0 and ids == tok.encode(alone, bos=True)
    with pytest.raises(ValueError, match="modality marker"):
        fit_prompt(tok, ["no marker"], target, max_len=100, reserve=1)


def test_text_stop_ids_and_throughput(lm):
    tok = lm.tokenizer
    ids = text_stop_ids(tok)
    assert tok.text_marker_id in ids and tok.speech_marker_id in ids
    assert all(tok.piece_of(i) in ("[Text]", "[Speech]") or "\n" in tok.piece_of(i) or tok.piece_of(i) == "<0x0A>"
               for i in ids)
    assert len(ids) > 2  # the toy vocabulary has newline pieces
    assert text_stop_ids(tok, newlines=False) == sorted([tok.text_marker_id, tok.speech_marker_id])
    from spiritlm.generation import DecodeStats

    t = Throughput()
    t.add(DecodeStats("generate", 2, 100, 130, 2.0))
    t.add(DecodeStats("score", 3, 0, 60, 1.0))
    t.add(None)
    d = t.as_dict()
    assert d["generated_tokens_per_s"] == 50.0 and d["scored_tokens_per_s"] == 60.0 and d["tokens_per_s"] == 50.0
