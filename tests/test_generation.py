"""SpiritLM generation: greedy equivalence with transformers, masks, KV cache, prompts, CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spiritlm.cli import main
from spiritlm.generation import SpiritLM, build_prompt, pick_next, sample_next
from fixtures import tiny_hf_llama
from spiritlm.data.synthetic import toy_tokenizer


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    toy_tokenizer(d, num_hubert=64)
    return d


@pytest.fixture(scope="module")
def hf_dir(tok_dir, tmp_path_factory):
    from spiritlm.text_tokenizer import SpiritTextTokenizer

    tok = SpiritTextTokenizer.load(tok_dir / "tokenizer.model")
    return tiny_hf_llama(
        tmp_path_factory.mktemp("hf"), vocab_size=tok.vocab_size, seed=5, tokenizer_model=tok_dir / "tokenizer.model"
    )


@pytest.fixture(scope="module")
def lm(hf_dir):
    return SpiritLM.from_pretrained(hf_dir)


def hf_greedy(hf_dir, prompt_ids, banned, n, eos):
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(hf_dir).eval()
    out = model.generate(
        torch.tensor([prompt_ids]),
        max_new_tokens=n,
        do_sample=False,
        bad_words_ids=[[i] for i in banned],
        eos_token_id=eos,
        pad_token_id=eos,
    )
    return out[0, len(prompt_ids):].tolist()


@pytest.mark.parametrize(
    "inputs,modality",
    [
        ([("text", "the cat saw a red ball")], "text"),
        ([("text", "the cat saw a red ball")], "speech"),
        ([("speech", "[Hu3][Hu7][Hu9][Hu0]")], "text"),
        ([("text", "my friend"), ("speech", "[Hu12][Hu5]")], "arbitrary"),
    ],
)
def test_greedy_matches_transformers_with_banned_tokens(lm, hf_dir, inputs, modality):
    res = lm.generate_with_details(inputs, output_modality=modality, max_new_tokens=24, do_sample=False)
    allowed = lm.allowed_tokens(modality)
    banned = (~allowed).nonzero().flatten().tolist()
    ref = hf_greedy(hf_dir, res["prompt_ids"], banned, 24, lm.tokenizer.eos_id)
    assert res["ids"] == ref
    assert len(res["ids"]) > 0


def test_masks_keep_generation_in_its_modality(lm):
    tok = lm.tokenizer
    speech = torch.as_tensor(tok.speech_token_mask())
    text = torch.as_tensor(tok.text_token_mask())
    for seed in range(3):
        ids = lm.generate_with_details("the dog", output_modality="text", max_new_tokens=40, do_sample=True,
                                       temperature=1.5, top_p=1.0, seed=seed)["ids"]
        assert all(not speech[i] and i not in (tok.text_marker_id, tok.speech_marker_id) for i in ids)
        assert all(text[i] or i == tok.eos_id for i in ids)
        ids = lm.generate_with_details("the dog", output_modality="speech", max_new_tokens=40, do_sample=True,
                                       temperature=1.5, top_p=1.0, seed=seed)["ids"]
        assert all(speech[i] or i == tok.eos_id for i in ids)
    # without the mask the same sampling does leave the modality (the test above is not vacuous)
    ids = lm.generate_ids(tok.encode("[Text]the dog", bos=True), max_new_tokens=60, do_sample=True,
                          temperature=1.5, top_p=1.0, seed=0)
    assert any(speech[i] for i in ids) and any(text[i] for i in ids)


def test_kv_cache_equals_full_recomputation(lm):
    prompt = lm.tokenizer.encode("[Text]the old man carried[Speech][Hu4][Hu9]", bos=True)
    for allowed in (None, lm.allowed_tokens("arbitrary")):
        a = lm.generate_ids(prompt, max_new_tokens=40, do_sample=False, allowed=allowed, use_cache=True, stop_at_eos=False)
        b = lm.generate_ids(prompt, max_new_tokens=40, do_sample=False, allowed=allowed, use_cache=False, stop_at_eos=False)
        assert a == b and len(a) == 40
    s1 = lm.generate_ids(prompt, max_new_tokens=30, do_sample=True, seed=3, use_cache=True, temperature=1.2)
    s2 = lm.generate_ids(prompt, max_new_tokens=30, do_sample=True, seed=3, use_cache=False, temperature=1.2)
    assert s1 == s2


def test_sampling_is_seeded(lm):
    kw = dict(output_modality="arbitrary", max_new_tokens=30, do_sample=True, temperature=1.3, top_p=0.95)
    a = lm.generate_with_details("a bird", seed=1, **kw)["ids"]
    assert a == lm.generate_with_details("a bird", seed=1, **kw)["ids"]
    assert a != lm.generate_with_details("a bird", seed=2, **kw)["ids"]


def test_sample_next_filters():
    """Temperature, top-k and top-p filtering, on 400 rows sampled at once with per-row seeds."""
    logits = torch.tensor([0.0, 3.0, 2.0, 1.0, float("-inf")])
    assert sample_next(logits, do_sample=False) == 1
    rows = logits.expand(400, -1)
    seeds = torch.arange(400)

    def picks(**kw):
        return set(pick_next(rows, do_sample=True, seeds=seeds, step=3, **kw).tolist())

    assert picks(top_k=2) == {1, 2}
    assert picks(top_p=0.5) == {1}
    assert picks(temperature=5.0) == {0, 1, 2, 3}
    assert picks(top_k=50) == {0, 1, 2, 3}  # transformers' default k larger than the vocabulary: no filter
    # frequencies follow the softmax (4 tokens, 4000 draws: within 0.03 of the probabilities)
    many = pick_next(logits.expand(4000, -1), do_sample=True, seeds=torch.arange(4000), step=0)
    freq = torch.bincount(many, minlength=5).double() / 4000
    assert torch.allclose(freq, logits.softmax(-1).double(), atol=0.03) and freq[4] == 0
    # a row's draw depends on its seed and step only, not on the other rows of the batch
    alone = [int(pick_next(rows[:1], do_sample=True, seeds=seeds[i : i + 1], step=3, temperature=5.0)) for i in range(20)]
    assert alone == pick_next(rows[:20], do_sample=True, seeds=seeds[:20], step=3, temperature=5.0).tolist()
    assert pick_next(rows, do_sample=True, seeds=seeds, step=4, temperature=5.0).tolist() != \
        pick_next(rows, do_sample=True, seeds=seeds, step=3, temperature=5.0).tolist()


def test_build_prompt():
    assert build_prompt([("text", "the cat")], "speech") == "[Text]the cat[Speech]"
    assert build_prompt([("text", "the cat")], "text") == "[Text]the cat"
    assert build_prompt([("speech", "[Hu1]"), ("text", "hi")], "arbitrary") == "[Speech][Hu1][Text]hi"
    with pytest.raises(ValueError):
        build_prompt([("video", "x")], "text")
    with pytest.raises(ValueError):
        build_prompt([("text", "x")], "image")


class FakeSpeechTokenizer:
    def __init__(self):
        self.calls = []

    def encode_string(self, audio):
        self.calls.append(audio)
        return "[Hu1][Hu2][Hu3]"


class FakeVocoder:
    sample_rate = 16000

    def decode(self, units):
        return np.zeros(len(units["hubert"].split()) * 640, dtype=np.float32)


def test_speech_inputs_and_vocoder_outputs(hf_dir):
    stok, voc = FakeSpeechTokenizer(), FakeVocoder()
    lm = SpiritLM.from_pretrained(hf_dir, speech_tokenizer=stok, vocoder=voc)
    wav = np.zeros(16000, dtype=np.float32)
    res = lm.generate_with_details([("speech", wav)], output_modality="speech", max_new_tokens=12, do_sample=False)
    assert stok.calls and stok.calls[0] is wav
    assert res["prompt"] == "[Speech][Hu1][Hu2][Hu3]"
    outs = res["outputs"]
    assert outs and all(o.modality == "speech" for o in outs)
    n_units = sum(len(o.units["hubert"].split()) for o in outs)
    assert sum(len(o.content) for o in outs) == n_units * 640
    text_out = lm.generate([("speech", "[Hu5][Hu6]"), ("text", "the")], output_modality="text", max_new_tokens=10,
                           do_sample=False)
    assert all(o.modality == "text" and isinstance(o.content, str) for o in text_out)
    with pytest.raises(ValueError, match="speech tokenizer"):
        SpiritLM.from_pretrained(hf_dir).generate([("speech", wav)])


def test_speaker_reaches_the_vocoder_and_the_cli_writes_its_voice(hf_dir, tmp_path, capsys):
    """`spiritlm generate --speaker NAME|INDEX` voices speech outputs with that vocoder speaker."""
    import soundfile as sf

    from spiritlm.vocoder import Vocoder, VocoderConfig
    from spiritlm.vocoder.model import UnitHifiGAN

    calls = []

    class SpeakerVocoder(FakeVocoder):
        def decode(self, units, speaker=0):
            calls.append(speaker)
            return super().decode(units)

    kw = dict(output_modality="speech", max_new_tokens=6, do_sample=False)
    SpiritLM.from_pretrained(hf_dir, vocoder=SpeakerVocoder(), speaker="ex02").generate("the cat", **kw)
    assert calls and set(calls) == {"ex02"}
    calls.clear()
    SpiritLM.from_pretrained(hf_dir, vocoder=SpeakerVocoder()).generate("the cat", **kw)
    assert calls and set(calls) == {0}  # the vocoder's default, as before

    torch.manual_seed(0)  # a real vocoder with two speakers whose embeddings differ
    cfg = VocoderConfig.preset("tiny", num_units=501, num_speakers=2, embedding_dim=8, upsample_initial_channel=32,
                               resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3, 5]], duration_hidden=8)
    model = UnitHifiGAN(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("original0"):
                p.uniform_(0.5, 1.5)
    Vocoder(model, speakers=["alice", "bob"]).save(tmp_path / "voc")
    # in process (spiritlm.cli.main), as the console script runs it: `test_console_script_runs` covers the launch
    base = ["generate", "--model", str(hf_dir), "--text", "the cat", "--output_modality", "speech", "--max_new_tokens", "6",
            "--do_sample", "false", "--vocoder", str(tmp_path / "voc")]
    wavs = {}
    for spk in ("alice", "1"):
        main([*base, "--speaker", spk, "--out", str(tmp_path / f"{spk}.wav")])
        wavs[spk] = sf.read(tmp_path / f"{spk}.wav")[0]
    assert wavs["alice"].shape == wavs["1"].shape and not np.array_equal(wavs["alice"], wavs["1"])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main([*base, "--speaker", "carol", "--out", str(tmp_path / "c.wav")])
    assert exc.value.code == 1
    assert "unknown speaker 'carol'; known: alice, bob (--speaker)" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "c.wav").exists()


def test_generate_cli(hf_dir, lm, capsys):
    main(["generate", "--model", str(hf_dir), "--text", "the cat", "--output_modality", "speech", "--max_new_tokens", "8",
          "--do_sample", "false", "--show_ids", "true"])
    out = capsys.readouterr().out
    expected = lm.generate_with_details("the cat", output_modality="speech", max_new_tokens=8, do_sample=False)
    assert f"generated ids: {expected['ids']}" in out
    assert "[speech] [Hu" in out


def test_min_new_tokens_forbids_early_eos(lm):
    prompt = lm.tokenizer.encode("[Text]a dog", bos=True)
    eos = lm.tokenizer.eos_id
    allowed = torch.zeros(lm.config.vocab_size, dtype=torch.bool)
    allowed[[eos, 10, 11]] = True  # EOS competes with two tokens only
    free = lm.generate_ids(prompt, max_new_tokens=20, do_sample=True, temperature=3.0, seed=0, allowed=allowed)
    forced = lm.generate_ids(prompt, max_new_tokens=20, do_sample=True, temperature=3.0, seed=0, allowed=allowed,
                             min_new_tokens=8)
    assert free[-1] == eos and len(free) < 8  # sanity: EOS does come early without the constraint
    assert eos not in forced[:8] and len(forced) >= 8


def test_a_speech_output_without_style_gets_a_style_the_vocoder_has():
    """Meta's fallback styles (71, 68, 98) exist only in a 100-style vocoder; a 16-style one gets 0."""
    from types import SimpleNamespace

    lm = SpiritLM.__new__(SpiritLM)
    lm.vocoder, lm.num_units = SimpleNamespace(config=SimpleNamespace(num_style=16)), None
    assert lm._fallback_style() == 0
    lm.vocoder.config.num_style = 100
    assert lm._fallback_style() == 71
    lm.vocoder, lm.num_units = None, {"hubert": 100, "style": 70}
    assert lm._fallback_style() == 68
    lm.num_units = None
    assert lm._fallback_style() is None  # unknown sizes: Meta's random choice


# ---------------------------------------------------------------------------------------------
# streaming (issue 17 item 1)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "inputs,modality,kw",
    [
        ("the cat saw a red ball", "text", dict(do_sample=False)),
        ("the cat saw", "speech", dict(do_sample=False)),
        ([("text", "my friend"), ("speech", "[Hu12][Hu5]")], "arbitrary", dict(do_sample=True, seed=7, temperature=1.3)),
        ("a bird", "text", dict(do_sample=True, seed=3, temperature=1.2, top_k=50, top_p=0.9)),
    ],
)
def test_stream_yields_what_generate_returns(lm, inputs, modality, kw):
    from spiritlm.generation import StreamPiece

    ref = lm.generate_with_details(inputs, output_modality=modality, max_new_tokens=30, **kw)
    pieces = list(lm.stream(inputs, output_modality=modality, max_new_tokens=30, **kw))
    assert all(isinstance(p, StreamPiece) for p in pieces)
    assert [p.token_id for p in pieces] == ref["ids"] and pieces
    tok = lm.tokenizer
    speech = torch.as_tensor(tok.speech_token_mask())
    for p in pieces:
        if speech[p.token_id]:
            assert p.modality == "speech" and p.unit == tok.piece_of(p.token_id)
        else:
            assert p.unit is None
    # the pieces rebuild generate's segments: text deltas per text run, units per speech run
    runs: list[tuple[str, str]] = []
    for p in pieces:
        if p.modality == "speech" or p.token_id in (tok.text_marker_id, tok.eos_id):
            if p.text:  # held-back text of the run this piece ends
                runs[-1] = ("text", runs[-1][1] + p.text)
            if p.unit is None:
                continue
        piece = p.unit if p.modality == "speech" else p.text
        if runs and runs[-1][0] == p.modality:
            runs[-1] = (p.modality, runs[-1][1] + piece)
        else:
            runs.append((p.modality, piece))
    got = [(m, c.strip() if m == "text" else c) for m, c in runs if m == "speech" or c.strip()]
    assert got == [(o.modality, o.content if o.modality == "text" else o.tokens) for o in ref["outputs"]]


def test_stream_yields_before_the_generation_ends(lm):
    calls = []
    hook = lm.model.decoder_frontend.register_forward_hook(lambda *a: calls.append(1))  # one call per forward
    try:
        it = lm.stream("the cat", output_modality="speech", max_new_tokens=20, min_new_tokens=20, do_sample=False)
        first = next(it)
        assert len(calls) == 1  # the prompt's forward only: the first token came out at once
        rest = list(it)
        assert len(calls) == 20 and len(rest) == 19 and first.modality == "speech"
    finally:
        hook.remove()
    assert lm.last_stats.new_tokens == 20


def test_stream_text_deltas_join_to_the_decoded_text(lm):
    """Text deltas of a long sampled text run (sentencepiece's word boundaries, byte pieces) join
    exactly to the tokenizer's decoding of the run."""
    for seed in range(3):
        pieces = list(lm.stream("the", output_modality="text", max_new_tokens=40, seed=seed, temperature=2.0, top_p=1.0))
        ids = [p.token_id for p in pieces if p.token_id != lm.tokenizer.eos_id]
        assert "".join(p.text for p in pieces) == lm.tokenizer.decode(ids)


# ---------------------------------------------------------------------------------------------
# model <-> speech tokenizer <-> vocoder <-> prompt (issue 18 items 7 and 8)
# ---------------------------------------------------------------------------------------------


def fake_vocoder(num_units, num_pitch=0, num_style=0, default=None):
    from types import SimpleNamespace

    voc = FakeVocoder()
    voc.config = SimpleNamespace(num_units=num_units, num_pitch=num_pitch, num_style=num_style)
    voc.default_code = lambda name: default
    return voc


@pytest.fixture(scope="module")
def hf_dir_40(hf_dir, tmp_path_factory):
    """The same model whose data had 40 of the vocabulary's 64 HuBERT units (speech_units.json)."""
    import json
    import shutil

    d = tmp_path_factory.mktemp("hf40") / "m"
    shutil.copytree(hf_dir, d)
    (d / "speech_units.json").write_text(json.dumps({"hubert": 40, "pitch": 0, "style": 0}))
    return d


def test_a_vocoder_for_other_units_is_refused_at_load(hf_dir, hf_dir_40):
    from spiritlm.errors import UserError

    with pytest.raises(UserError, match=r"vocoder \(--vocoder\) has 501 hubert codes but the model \(--model\) was "
                                        r"trained on hubert units 0..39 \(speech_units.json\): they come from different"):
        SpiritLM.from_pretrained(hf_dir_40, vocoder=fake_vocoder(501))
    with pytest.raises(UserError, match=r"vocoder \(--vocoder\) has 20 hubert codes but the model \(--model\) was trained"):
        SpiritLM.from_pretrained(hf_dir_40, vocoder=fake_vocoder(20))
    # units not recorded: the vocoder must cover every [HuN] of the vocabulary (64)
    with pytest.raises(UserError, match=r"vocoder \(--vocoder\) has 50 hubert codes but the model \(--model\) can emit"):
        SpiritLM.from_pretrained(hf_dir, vocoder=fake_vocoder(50))
    SpiritLM.from_pretrained(hf_dir_40, vocoder=fake_vocoder(40))
    SpiritLM.from_pretrained(hf_dir_40, vocoder=fake_vocoder(42))  # the data may not have used its last units
    SpiritLM.from_pretrained(hf_dir, vocoder=fake_vocoder(64))
    # an expressive vocoder on a base model: only with a default code to fill pitch/style in
    with pytest.raises(UserError, match=r"needs a pitch stream that the model \(--model\) never emits"):
        SpiritLM.from_pretrained(hf_dir_40, vocoder=fake_vocoder(40, num_pitch=64, num_style=16))
    SpiritLM.from_pretrained(hf_dir_40, vocoder=fake_vocoder(40, num_pitch=64, num_style=16, default=0))


def test_a_speech_tokenizer_for_other_units_is_refused_at_load(hf_dir_40):
    from types import SimpleNamespace

    from spiritlm.errors import UserError

    stok = SimpleNamespace(num_units={"hubert": 64, "pitch": 0, "style": 0}, encode_string=lambda a: "[Hu1]")
    with pytest.raises(UserError, match=r"speech tokenizer \(--speech_tokenizer\) makes 64 hubert units but the model"):
        SpiritLM.from_pretrained(hf_dir_40, speech_tokenizer=stok)
    stok.num_units = {"hubert": 40, "pitch": 0, "style": 0}
    SpiritLM.from_pretrained(hf_dir_40, speech_tokenizer=stok)


def test_a_base_vocoder_on_an_expressive_model_is_refused(tmp_path):
    """The model emits [PiN]/[StN]; a vocoder without pitch and style inputs would drop them."""
    from types import SimpleNamespace

    from spiritlm.errors import UserError

    tok = SimpleNamespace(num_units={"hubert": 100, "pitch": 64, "style": 100})
    from spiritlm.generation import check_compatible

    with pytest.raises(UserError, match=r"emits pitch tokens \(\[PiN\]\) but the vocoder \(--vocoder\) has no pitch"):
        check_compatible(tok, None, None, fake_vocoder(100))
    with pytest.raises(UserError, match=r"vocoder \(--vocoder\) has 32 pitch codes but the model \(--model\) was trained"):
        check_compatible(tok, {"hubert": 100, "pitch": 64, "style": 100}, None, fake_vocoder(100, 32, 100))
    check_compatible(tok, {"hubert": 100, "pitch": 64, "style": 100}, None, fake_vocoder(100, 64, 100))


def test_a_speech_prompt_unit_the_model_lacks_is_refused(hf_dir_40, capsys):
    from spiritlm import cli
    from spiritlm.errors import UserError

    lm40 = SpiritLM.from_pretrained(hf_dir_40)
    with pytest.raises(UserError, match=r"speech prompt token \[Hu50\]: the model \(--model\) has 40 hubert units"):
        lm40.generate([("speech", "[Hu50][Hu3]")], max_new_tokens=2)
    assert lm40.generate([("speech", "[Hu39][Hu3]")], max_new_tokens=2, do_sample=False)
    code = 0
    try:
        cli.main(["generate", "--model", str(hf_dir_40), "--speech", "[Hu50][Hu3]", "--max_new_tokens", "2"])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and "Traceback" not in "\n".join(err)
    assert "speech prompt token [Hu50]" in err[-1] and err[-1].endswith("(--speech)")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_batched_greedy_equals_one_at_a_time(hf_dir):
    """bf16 on a GPU: the batched decoder (left padding, static cache) gives each prompt the
    greedy ids it gets alone, and streams the same ids."""
    lm = SpiritLM.from_pretrained(hf_dir, device="cuda", dtype=torch.bfloat16)
    texts = ["the cat", "a dog saw the river and my friend carried a small boat", "x", "her sister liked the"]
    prompts = [lm.tokenizer.encode("[Text]" + t, bos=True) for t in texts]
    one = [lm.generate_ids(p, max_new_tokens=20, do_sample=False, stop_at_eos=False) for p in prompts]
    assert lm.generate_batch_ids(prompts, max_new_tokens=20, stop_at_eos=False) == one
    assert [p.token_id for p in lm.stream("the cat", max_new_tokens=20, do_sample=False)] == \
        lm.generate_with_details("the cat", max_new_tokens=20, do_sample=False)["ids"]


def test_eval_commands_refuse_a_vocoder_for_other_units(hf_dir_40, tmp_path):
    """`spiritlm eval … --vocoder` loads it beside the LM: the same check, before any work."""
    from spiritlm.errors import UserError
    from spiritlm.evals.common import load_eval_model
    from spiritlm.vocoder import Vocoder, VocoderConfig
    from spiritlm.vocoder.model import UnitHifiGAN

    def save(n, name):
        cfg = VocoderConfig.preset("tiny", num_units=n, num_speakers=1, embedding_dim=8, upsample_initial_channel=32,
                                   resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3, 5]], duration_hidden=8)
        Vocoder(UnitHifiGAN(cfg)).save(tmp_path / name)
        return str(tmp_path / name)

    with pytest.raises(UserError, match=r"vocoder \(--vocoder\) has 501 hubert codes .* different speech tokenizers"):
        load_eval_model(str(hf_dir_40), vocoder=save(501, "v501"))
    assert load_eval_model(str(hf_dir_40), vocoder=save(40, "v40")).vocoder.config.num_units == 40
