"""SpiritLM generation: greedy equivalence with transformers, masks, KV cache, prompts, CLI."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from spiritlm.generation import SpiritLM, build_prompt, sample_next
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
    logits = torch.tensor([0.0, 3.0, 2.0, 1.0, float("-inf")])
    assert sample_next(logits, do_sample=False) == 1
    g = torch.Generator().manual_seed(0)
    picks = {sample_next(logits, do_sample=True, top_k=2, generator=g) for _ in range(200)}
    assert picks == {1, 2}
    picks = {sample_next(logits, do_sample=True, top_p=0.5, generator=g) for _ in range(100)}
    assert picks == {1}
    picks = {sample_next(logits, do_sample=True, temperature=5.0, generator=g) for _ in range(400)}
    assert picks == {0, 1, 2, 3}


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


def test_speaker_reaches_the_vocoder_and_the_cli_writes_its_voice(hf_dir, tmp_path):
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
    base = [sys.executable, "-m", "spiritlm.cli", "generate", "--model", str(hf_dir), "--text", "the cat", "--output_modality",
            "speech", "--max_new_tokens", "6", "--do_sample", "false", "--vocoder", str(tmp_path / "voc")]
    wavs = {}
    for spk in ("alice", "1"):
        subprocess.run([*base, "--speaker", spk, "--out", str(tmp_path / f"{spk}.wav")], capture_output=True, text=True, check=True)
        wavs[spk] = sf.read(tmp_path / f"{spk}.wav")[0]
    assert wavs["alice"].shape == wavs["1"].shape and not np.array_equal(wavs["alice"], wavs["1"])
    bad = subprocess.run([*base, "--speaker", "carol", "--out", str(tmp_path / "c.wav")], capture_output=True, text=True)
    assert bad.returncode == 1 and "unknown speaker 'carol'; known: alice, bob (--speaker)" in bad.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "c.wav").exists()


def test_generate_cli(hf_dir, lm):
    cmd = [sys.executable, "-m", "spiritlm.cli", "generate", "--model", str(hf_dir), "--text", "the cat",
           "--output_modality", "speech", "--max_new_tokens", "8", "--do_sample", "false", "--show_ids", "true"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
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
