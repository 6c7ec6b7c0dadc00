"""Vocoder.stream: chunks of a growing token stream concatenate to whole-utterance synthesis."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spiritlm.errors import UserError
from spiritlm.vocoder import Vocoder, VocoderConfig
from spiritlm.vocoder.model import UnitHifiGAN
from spiritlm.vocoder.streaming import TokenReader


def make_vocoder(source: bool, layout: str = "tiny", **kw) -> Vocoder:
    """Untrained, with weight norms raised so that the audio is loud (the N(0, 0.01) init is near-silent)."""
    torch.manual_seed(0)
    base = dict(num_pitch=8, num_style=5, num_speakers=3, embedding_dim=8, upsample_initial_channel=32,
                duration_hidden=16, harmonic_source=source, default_pitch=2)
    if layout == "meta":  # Meta's generator: 5·4·4·4·2, no source
        base.update(upsample_rates=[5, 4, 4, 4, 2], upsample_kernel_sizes=[11, 8, 8, 8, 4],
                    resblock_kernel_sizes=[3, 7], resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5]])
    base.update(kw)
    model = UnitHifiGAN(VocoderConfig.preset("tiny", **base)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("original0"):
                p.uniform_(0.5, 1.5)
        if source:
            model.source.proj.bias[model.source.frames_per_unit:] = 2.0  # voiced: the sines are on
    return Vocoder(model)


def lm_tokens(n_units: int, seed: int = 0, pitch_every: int = 7, style_every: int = 25) -> list[str]:
    """An LM-like token stream: a style token about once a second, pitch tokens every few units."""
    rng = np.random.default_rng(seed)
    toks = []
    for i in range(n_units):
        if i % style_every == 3:
            toks.append(f"[St{rng.integers(5)}]")
        if i % pitch_every == 1:
            toks.append(f"[Pi{rng.integers(8)}]")
        toks.append(f"[Hu{rng.integers(100)}]")
    return toks


@pytest.fixture(scope="module")
def with_source():
    return make_vocoder(True)


@pytest.mark.parametrize("chunk_frames", [2, 25])
def test_stream_equals_whole_synthesis_with_source(with_source, chunk_frames):
    toks = lm_tokens(50)  # units before the first [Pi] / [St] take the first ones
    whole = with_source.synthesize("".join(toks), speaker=1)
    chunks = list(with_source.stream(iter(toks), speaker=1, chunk_frames=chunk_frames))
    assert len(chunks) > 1 and all(c.dtype == np.float32 and c.ndim == 1 for c in chunks)
    assert all(c.size >= chunk_frames * 640 for c in chunks[:-1])
    got = np.concatenate(chunks)
    assert got.shape == whole.shape and np.abs(whole).max() > 0.1
    # the source's sine phase is carried across chunks; what remains is float rounding of the
    # F0 head (windows of other lengths) accumulated by the phase
    assert np.abs(got - whole).max() < 1e-4


def test_chunks_come_before_the_stream_ends(with_source):
    toks = lm_tokens(120)
    read = []

    def tokens():
        for i, t in enumerate(toks):
            read.append(i)
            yield t

    it = with_source.stream(tokens(), chunk_frames=10)
    first = next(it)
    ctx = with_source.model.context_frames + with_source.model.source.context + with_source.model.duration_context
    assert first.size >= 10 * 640
    # the first chunk needs its 10 frames plus the receptive fields beyond them, not the whole stream
    assert len(read) < len(toks) / 2 and len(read) <= 10 + ctx + 10, (len(read), ctx)
    rest = list(it)
    assert len(read) == len(toks) and rest


def test_meta_layout_stream_exact(tmp_path):
    voc = make_vocoder(False, layout="meta")
    voc.export_meta(tmp_path / "meta")
    meta = Vocoder.from_pretrained(tmp_path / "meta")
    toks = lm_tokens(60, seed=3)
    whole = meta.synthesize("".join(toks), speaker=2)
    got = np.concatenate(list(meta.stream(toks, speaker=2, chunk_frames=4)))
    assert got.shape == whole.shape and np.abs(whole).max() > 0.05
    np.testing.assert_allclose(got, whole, atol=1e-5)
    # frame-rate units: one frame per unit
    frame_rate = np.concatenate(list(meta.stream(toks, dur_pred=False, chunk_frames=4)))
    np.testing.assert_allclose(frame_rate, meta.synthesize("".join(toks), dur_pred=False), atol=1e-5)
    assert frame_rate.size == 60 * 640


def test_pieces_whole_strings_and_text_are_read_like_synthesize():
    voc = make_vocoder(False)
    s = "[St3][Pi1][Hu5][Hu7][Pi4][Hu9][Hu2][St1][Hu11][Pi7][Hu5][Hu40][Hu7]"
    whole = voc.synthesize(s)
    pieces = ["hello [St3]", "[Pi1][Hu", "5]", "[Hu7][Pi4] text", "[Hu9][Hu2][St1][Hu11][Pi7][Hu5][Hu40][Hu7]"]
    np.testing.assert_allclose(np.concatenate(list(voc.stream(pieces, chunk_frames=2))), whole, atol=1e-5)
    np.testing.assert_allclose(np.concatenate(list(voc.stream(s))), whole, atol=1e-5)  # one string


def test_token_reader_settles_units_when_their_codes_are_known():
    r = TokenReader(has_pitch=True, has_style=True)
    r.feed("[Hu1][Hu2]")
    assert r.units == []  # their pitch comes from the first [Pi] token, still unknown
    r.feed("[St4][Pi6][Hu3]")
    assert r.units == [1, 2, 3] and r.pitch == [6, 6, 6] and r.style == [4, 4, 4]
    r.feed("[Pi2][Hu")
    assert r.units == [1, 2, 3]
    r.feed("8]")
    assert r.units[-1] == 8 and r.pitch[-1] == 2
    no_style = TokenReader(has_pitch=True, has_style=True)
    no_style.feed("[Pi1][Hu1][Hu2]")
    assert no_style.units == []  # a style token may still come
    no_style.finish(default_pitch=None, default_style=9)
    assert no_style.style == [9, 9] and no_style.pitch == [1, 1]


def test_missing_streams_and_bad_input():
    voc = make_vocoder(False)
    s = "[Hu1][Hu2][Hu3][Hu4]"  # no pitch and style: the defaults, as synthesize
    np.testing.assert_allclose(np.concatenate(list(voc.stream(list(s.replace("]", "] ").split())))), voc.synthesize(s), atol=1e-5)
    with pytest.raises(UserError, match="beyond the vocoder's 8 pitch"):
        list(voc.stream(["[Pi9]", "[Hu1]"]))
    with pytest.raises(UserError, match="no \\[HuN\\] tokens"):
        list(voc.stream(["[Pi1]", "text"]))
    with pytest.raises(UserError, match="speaker"):
        list(voc.stream(["[Hu1]"], speaker="nobody"))
    with pytest.raises(UserError, match="chunk_frames"):
        list(voc.stream(["[Hu1]"], chunk_frames=0))
    voc.config.default_pitch = None
    with pytest.raises(UserError, match="default_pitch"):
        list(voc.stream(["[Hu1]"]))
