"""The extended sentencepiece tokenizer: id layout, round trips, sentencepiece/transformers loading."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import sentencepiece as spm
from hypothesis import given, settings
from hypothesis import strategies as st
from sentencepiece import sentencepiece_model_pb2 as sp_pb2

from spiritlm.formats import speech_vocabulary
from spiritlm.text_tokenizer import SpiritTextTokenizer, extend_model_proto, padded_size, train_sentencepiece

WORDS = (
    "the a cat dog sat ran on under mat table quickly slowly happy sad house river bright dark little big old new "
    "green blue song voice morning evening walked talked over near far always yes no, question? answer! 42 1999"
).split()


def corpus(n: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 15))) for _ in range(n)]


@pytest.fixture(scope="module")
def base_model() -> bytes:
    return train_sentencepiece(corpus(), vocab_size=500)


@pytest.fixture(scope="module")
def tok(base_model) -> SpiritTextTokenizer:
    return SpiritTextTokenizer(extend_model_proto(base_model, 501, 64, 100))


@pytest.fixture(scope="module")
def saved(tok, tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "tokenizer.model"
    tok.save(path)
    return path


def llama_sized_model(base: bytes, size: int = 32000) -> bytes:
    """A model with exactly ``size`` pieces (LLaMA-2's count): a trained one plus filler NORMAL pieces."""
    proto = sp_pb2.ModelProto()
    proto.ParseFromString(base)
    i = 0
    while len(proto.pieces) < size:
        proto.pieces.add(piece=f"\u2581zz{i}", score=-1e4 - i, type=sp_pb2.ModelProto.SentencePiece.NORMAL)
        i += 1
    return proto.SerializeToString()


def test_padded_size():
    assert padded_size(32000 + 2 + 501, 256) == 32512
    assert padded_size(32000 + 2 + 501 + 64 + 100, 256) == 32768
    assert padded_size(512, 256) == 512
    assert padded_size(7, 1) == 7


def test_llama_sized_layout_matches_meta(base_model):
    base = llama_sized_model(base_model)
    plain = spm.SentencePieceProcessor(model_proto=base)
    tok = SpiritTextTokenizer(extend_model_proto(base, 501))
    assert tok.vocab_size == 32512
    assert (tok.text_marker_id, tok.speech_marker_id) == (32000, 32001)
    assert tok.id_of("[Hu0]") == 32002 and tok.id_of("[Hu500]") == 32502
    ex = SpiritTextTokenizer(extend_model_proto(base, 501, 64, 100))
    assert ex.vocab_size == 32768
    # Meta's get_forbidden_tokens: hubert 32002.., pitch 32503.., style 32567..
    assert ex.speech_token_ids("hubert") == list(range(32002, 32503))
    assert ex.speech_token_ids("pitch") == list(range(32503, 32567))
    assert ex.speech_token_ids("style") == list(range(32567, 32667))
    # text ids unchanged
    for s in corpus(20, seed=1):
        assert ex.encode(s) == plain.encode(s)
    assert ex.sp.vocab_size() == 32768


def test_text_pieces_unchanged(base_model, tok):
    base = sp_pb2.ModelProto()
    base.ParseFromString(base_model)
    ext = sp_pb2.ModelProto()
    ext.ParseFromString(tok.model_proto)
    n = len(base.pieces)
    assert tok.num_text_pieces == n
    assert [(p.piece, p.score, p.type) for p in ext.pieces[:n]] == [(p.piece, p.score, p.type) for p in base.pieces]
    assert [p.piece for p in ext.pieces[n : n + 667]] == speech_vocabulary(501, 64, 100)
    assert tok.vocab_size % 256 == 0
    assert all(p.type == sp_pb2.ModelProto.SentencePiece.UNUSED for p in ext.pieces[n + 667 :])


def test_extend_twice_fails(tok):
    with pytest.raises(ValueError, match="already has"):
        extend_model_proto(tok.model_proto)


def test_pad_multiple_configurable(base_model):
    t = SpiritTextTokenizer(extend_model_proto(base_model, 501, pad_to_multiple=1))
    assert t.vocab_size == t.num_text_pieces + 503
    t = SpiritTextTokenizer(extend_model_proto(base_model, 501, pad_to_multiple=64))
    assert t.vocab_size % 64 == 0 and t.vocab_size - 64 < t.num_text_pieces + 503


def test_every_speech_token_is_one_id(tok):
    for piece in speech_vocabulary(501, 64, 100):
        ids = tok.encode(piece)
        assert ids == [tok.id_of(piece)], piece
        # plain sentencepiece also keeps it whole (after its dummy-prefix piece)
        assert tok.sp.encode(piece, out_type=str)[-1] == piece


def test_mixed_encoding_has_no_stray_prefix(tok):
    s = "[Text]the cat sat[Speech][Hu12][Hu7][Pi3][St99][Hu12][Text]on the mat"
    ids = tok.encode(s)
    pieces = [tok.piece_of(i) for i in ids]
    assert pieces[0] == "[Text]"
    j = pieces.index("[Speech]")
    assert pieces[j : j + 6] == ["[Speech]", "[Hu12]", "[Hu7]", "[Pi3]", "[St99]", "[Hu12]"]
    assert pieces[j - 1] != "\u2581" and "\u2581" not in pieces  # no lone dummy-prefix piece anywhere
    # text spans are encoded as sentencepiece encodes them at the start of a document
    assert ids[1:j] == tok.sp.encode("the cat sat")
    assert tok.decode(ids) == s


@pytest.mark.parametrize(
    "s",
    [
        "the cat sat on the mat",
        "Question? 1999 answers, yes!",
        "[Speech][Hu0][Hu500][Hu3]",
        "[St3][Pi63][Hu1][Pi0][Hu2]",
        "[Text]hello world[Speech][Hu1][Hu2][Text]bye",
        "[Speech][Hu5][Text]a b  c [Speech][Hu6]",
        "naïve café ☃ [Text]",
        "[Hu1] [Hu2]",
        "  two  spaces ",
        "tab\there\nnewline",
        "",
    ],
)
def test_round_trip(tok, s):
    assert tok.decode(tok.encode(s)) == s


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.text(alphabet="abcdefghij ,.?!XYZ0123\té", min_size=1, max_size=20),
            st.sampled_from(["[Text]", "[Speech]"]),
            st.integers(0, 500).map(lambda i: f"[Hu{i}]"),
            st.integers(0, 63).map(lambda i: f"[Pi{i}]"),
            st.integers(0, 99).map(lambda i: f"[St{i}]"),
        ),
        max_size=12,
    )
)
def test_round_trip_property(tok, parts):
    s = "".join(parts)
    ids = tok.encode(s)
    assert tok.decode(ids) == s
    n_special = sum(1 for p in parts if p.startswith("[") and p.endswith("]") and p[1:3] in ("Te", "Sp", "Hu", "Pi", "St"))
    assert sum(1 for i in ids if i >= tok.num_text_pieces) == n_special


def test_bos_eos_and_specials(tok):
    ids = tok.encode("[Text]hi", bos=True, eos=True)
    assert ids[0] == tok.bos_id == 1 and ids[-1] == tok.eos_id == 2
    assert tok.decode(ids) == "[Text]hi"
    assert tok.pad_id == tok.eos_id  # no pad piece, as in LLaMA-2
    with pytest.raises(KeyError, match=r"\[Hu501\]"):
        tok.encode("[Speech][Hu501]")


def test_masks(tok):
    speech = tok.speech_token_mask()
    text = tok.text_token_mask()
    assert speech.shape == text.shape == (tok.vocab_size,)
    assert speech.sum() == 501 + 64 + 100
    assert not (speech & text).any()
    for i in (tok.text_marker_id, tok.speech_marker_id, tok.bos_id, tok.eos_id, 0):
        assert not speech[i] and not text[i]
    assert text.sum() == tok.num_text_pieces - 3  # minus <unk>, <s>, </s>
    assert tok.is_speech_id(tok.id_of("[Pi7]")) and not tok.is_speech_id(tok.text_marker_id)
    assert not text[tok.num_text_pieces + 667 :].any() and not speech[tok.num_text_pieces + 667 :].any()
    assert tok.expressive and tok.num_units == {"hubert": 501, "pitch": 64, "style": 100}


def test_save_load(tok, saved):
    again = SpiritTextTokenizer.load(saved)
    assert again.model_proto == tok.model_proto
    assert again.encode("[Text]the cat[Speech][Hu3]") == tok.encode("[Text]the cat[Speech][Hu3]")
    with pytest.raises(FileNotFoundError):
        SpiritTextTokenizer.load(saved.parent / "missing.model")


def test_unextended_model_is_rejected(base_model):
    with pytest.raises(ValueError, match="no \\[Text\\] piece"):
        SpiritTextTokenizer(base_model)


def test_loads_in_plain_sentencepiece(tok, saved):
    sp = spm.SentencePieceProcessor(model_file=str(saved))
    assert sp.vocab_size() == tok.vocab_size
    for piece in ("[Text]", "[Speech]", "[Hu0]", "[Hu500]", "[Pi63]", "[St99]"):
        assert sp.piece_to_id(piece) == tok.id_of(piece)
        assert sp.is_control(sp.piece_to_id(piece)) is False
    s = "the cat sat"
    assert sp.encode(s) == tok.encode(s)
    # plain sentencepiece keeps speech tokens whole too; it differs only by the dummy prefix
    pieces = sp.encode("[Speech][Hu12][Hu7]", out_type=str)
    assert pieces == ["\u2581", "[Speech]", "[Hu12]", "[Hu7]"]


def test_loads_in_transformers_slow(tok, saved):
    from transformers import LlamaTokenizer

    hf = LlamaTokenizer(vocab_file=str(saved), legacy=True, add_bos_token=False)
    assert len(hf) == tok.vocab_size
    for piece in ("[Text]", "[Speech]", "[Hu0]", "[Hu500]", "[Pi63]", "[St99]"):
        assert hf.convert_tokens_to_ids(piece) == tok.id_of(piece)
    hf = tok.to_transformers()
    assert len(hf) == tok.vocab_size  # the added tokens are existing pieces: no new ids
    for s in ("[Text]the cat sat[Speech][Hu12][Hu7][Pi3][St99][Text]on the mat", "[Speech][Hu1][Hu2]", "plain text"):
        assert hf.encode(s, add_special_tokens=False) == tok.encode(s)
        assert hf.encode(s)[0] == tok.bos_id


def test_loads_in_transformers_fast(tok):
    fast = tok.to_transformers(fast=True)
    assert len(fast) == tok.vocab_size
    for s in ("[Text]the cat sat[Speech][Hu12][Hu7][Pi3][St99][Text]on the mat", "plain text, 42"):
        assert fast.encode(s, add_special_tokens=False) == tok.encode(s)


def test_trained_tokenizer_is_deterministic():
    texts = corpus(200, seed=3)
    a = SpiritTextTokenizer.train(texts, vocab_size=400)
    b = SpiritTextTokenizer.train(texts, vocab_size=400)
    assert a.model_proto == b.model_proto
    assert a.vocab_size % 256 == 0 and not a.expressive
    assert np.array_equal(a.speech_token_mask(), b.speech_token_mask())


def test_transformers_model_file_goes_with_the_tokenizer(base_model):
    """A tokenizer built from bytes writes its model to a temporary file for transformers; the
    file is removed when the tokenizer is collected (a long run built many and left them all)."""
    import gc

    t = SpiritTextTokenizer(extend_model_proto(base_model, 501, 64, 100))
    hf = t.to_transformers()
    path = t._hf_model_file
    assert os.path.isfile(path) and hf.encode("plain text", add_special_tokens=False) == t.encode("plain text")
    assert t.to_transformers()  # a second conversion reuses the same file
    assert t._hf_model_file == path
    del t, hf
    gc.collect()
    assert not os.path.exists(path)
