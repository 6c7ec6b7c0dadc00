"""LlamaDecoder's fast paths: oneDNN-packed projections against the modules' own, and the prefill
that runs only the prompts' real tokens (packed, no pad columns) against fairseq2's own forward."""

from __future__ import annotations

import copy

import pytest
import torch

from fairseq2.nn import BatchLayout

from fixtures import tiny_hf_llama
from spiritlm.data.synthetic import toy_tokenizer
from spiritlm.generation import LlamaDecoder, SpiritLM
from spiritlm.generation.decoder import PackedWeights

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    from spiritlm.text_tokenizer import SpiritTextTokenizer

    d = tmp_path_factory.mktemp("tok")
    toy_tokenizer(d, num_hubert=64)
    tok = SpiritTextTokenizer.load(d / "tokenizer.model")
    hf = tiny_hf_llama(tmp_path_factory.mktemp("hf"), vocab_size=tok.vocab_size, seed=5, tokenizer_model=d / "tokenizer.model")
    return SpiritLM.from_pretrained(hf)


def _run(dec: LlamaDecoder, prompts: list[list[int]], steps: int) -> tuple[list[torch.Tensor], list[list[int]]]:
    """Greedy decoding of left-padded ``prompts`` for ``steps`` steps: every step's logits and the ids."""
    W = max(map(len, prompts))
    ids = torch.tensor([[0] * (W - len(p)) + p for p in prompts])
    logits = dec.prefill(ids, [len(p) for p in prompts], W + steps)
    positions = torch.tensor([len(p) for p in prompts])
    out, picks = [logits], []
    for t in range(steps):
        nxt = logits.argmax(-1)
        picks.append(nxt.tolist())
        logits = dec.step(nxt, positions, W + t)
        positions = positions + 1
        out.append(logits)
    return out, [list(r) for r in zip(*picks)]


@torch.inference_mode()
def test_packed_projections_give_the_modules_logits_and_ids(lm):
    dec = LlamaDecoder(lm.model)
    assert dec.packed is not None  # CPU float32: packed
    plain = LlamaDecoder(lm.model)
    plain.packed = None
    prompts = [list(range(3, 3 + n)) for n in (9, 4, 7)]
    got, ids = _run(dec, prompts, 12)
    want, ids_plain = _run(plain, prompts, 12)
    assert ids == ids_plain
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4 * float(w.abs().max()))
    # a batch of one row per step keeps the modules' own (column-major) projections
    one = LlamaDecoder(lm.model)
    one.prefill(torch.tensor([prompts[0]]), [9], 12)
    plain.prefill(torch.tensor([prompts[0]]), [9], 12)
    x = torch.tensor([5])
    assert torch.equal(one.step(x, torch.tensor([9]), 9), plain.step(x, torch.tensor([9]), 9))


@torch.no_grad()
def test_packing_follows_the_weights_and_is_skipped_where_unsupported(lm):
    model = copy.deepcopy(lm.model)
    first = PackedWeights.of(model)
    assert first is not None and PackedWeights.of(model) is first  # cached
    model.final_proj.weight.mul_(2.0)  # in place: repacked
    second = PackedWeights.of(model)
    assert second is not None and second is not first
    x = torch.randn(4, model.final_proj.weight.size(1))
    torch.testing.assert_close(second.linear(x, second.final), torch.nn.functional.linear(x, model.final_proj.weight),
                               rtol=1e-4, atol=1e-3)
    assert PackedWeights.of(copy.deepcopy(model).to(torch.bfloat16)) is None
    assert PackedWeights.of(copy.deepcopy(model).train()) is None


@torch.inference_mode()
def test_prefill_of_real_tokens_only_gives_fairseq2s_logits(lm):
    """Left-padded prompts of mixed lengths: each row's prefill logits and next step equal fairseq2's
    forward of that prompt alone, although the cache starts as NaN (pad columns must be cleared)."""
    prompts = [list(range(3, 3 + n)) for n in (9, 2, 6, 9)]
    W = max(map(len, prompts))
    ids = torch.tensor([[0] * (W - len(p)) + p for p in prompts])
    nxt = torch.tensor([7, 8, 9, 10])
    for packed in (True, False):
        dec = LlamaDecoder(lm.model)
        if not packed:
            dec.packed = None
        allocate = dec._allocate

        def poisoned(*args, allocate=allocate, dec=dec):
            allocate(*args)
            for t in dec.k + dec.v:
                t.fill_(float("nan"))

        dec._allocate = poisoned
        first = dec.prefill(ids, [len(p) for p in prompts], W + 1)
        second = dec.step(nxt, torch.tensor([len(p) for p in prompts]), W)
        for r, p in enumerate(prompts):
            full = torch.tensor([p + [int(nxt[r])]])
            want = lm.model(full, BatchLayout.of(full))[0]
            torch.testing.assert_close(first[r], want[-2], rtol=1e-4, atol=1e-4 * float(want.abs().max()))
            torch.testing.assert_close(second[r], want[-1], rtol=1e-4, atol=1e-4 * float(want.abs().max()))


@torch.inference_mode()
def test_greedy_screening_gives_the_fp32_argmax(lm, monkeypatch):
    """``PackedWeights.greedy`` (bf16 product, fp32 re-check of the candidates) against the arg-max
    of the fp32 logits: random states, near-ties below bf16's resolution, exact ties (lowest id),
    banned ids, a row with every id banned (id 0, as ``argmax``) and a NaN (no answer)."""
    model = copy.deepcopy(lm.model)
    W = model.final_proj.weight  # [V, M]
    V = W.size(0)
    # ids 3 and 7 on the state e0 + e1 + e2: fp32 logits 64 * 3.008 (3) < 64 * 3.0116 (7), but in
    # bf16 1.004 rounds up to 1.0078 and 1.0116 down to 1.0078: 193 (3) > 192 (7), reversed
    W[3], W[7] = 0.0, 0.0
    W[3, :3] = 64 * torch.tensor([1.0, 1.004, 1.004])
    W[7, :3] = 64 * torch.tensor([1.0116, 1.0, 1.0])
    W[11] = W[9]  # an exact tie: the lowest id wins
    packed = PackedWeights.of(model)
    if packed is None or packed.final_bf16 is None:
        pytest.skip("no bf16 matmul in this build")
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(64, W.size(1), generator=g)
    hidden[0] = 0.0
    hidden[0, :3] = 1.0
    hidden[1] = W[9] * 3.0  # rows whose best ids are 7 (reversed in bf16) and 9 (tied with 11)
    hidden[1, :3] = 0.0
    banned = torch.rand(64, V, generator=g) < 0.3
    banned[:2] = False
    banned[2] = True  # everything banned
    want = torch.nn.functional.linear(hidden, W).masked_fill(banned, float("-inf")).argmax(-1)
    assert want[0] == 7 and want[1] == 9 and want[2] == 0
    assert torch.equal(packed.greedy(hidden, banned), want)
    assert torch.equal(packed.greedy(hidden, None), torch.nn.functional.linear(hidden, W).argmax(-1))
    hidden[5, 0] = float("nan")
    assert packed.greedy(hidden, None) is None
    monkeypatch.setattr(PackedWeights, "SLACK", 0.0)  # without the bound, bf16's pick is taken
    assert not torch.equal(packed.greedy(hidden[:2], None), want[:2])
