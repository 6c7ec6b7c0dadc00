"""Vocoder.stream: chunks of a growing token stream concatenate to whole-utterance synthesis."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spiritlm.errors import UserError
from spiritlm.vocoder import Vocoder, VocoderConfig
from spiritlm.vocoder.model import UnitHifiGAN
from spiritlm.vocoder.streaming import TokenReader
from spiritlm.vocoder.streaming_generator import StreamingGenerator


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


@pytest.mark.parametrize("chunk_frames", [1, 2, 5, 25])
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


@pytest.mark.parametrize("chunk_frames", [1, 4, 5, 25])
def test_meta_layout_stream_exact(tmp_path, chunk_frames):
    voc = make_vocoder(False, layout="meta")
    voc.export_meta(tmp_path / "meta")
    meta = Vocoder.from_pretrained(tmp_path / "meta")
    toks = lm_tokens(60, seed=3)
    whole = meta.synthesize("".join(toks), speaker=2)
    chunks = list(meta.stream(toks, speaker=2, chunk_frames=chunk_frames))
    assert all(c.size >= chunk_frames * 640 for c in chunks[:-1])
    got = np.concatenate(chunks)
    assert got.shape == whole.shape and np.abs(whole).max() > 0.05
    # every sample computed once by the same convolutions: float rounding only (measured 4.2e-7 at peak 0.44)
    np.testing.assert_allclose(got, whole, atol=1e-6)
    # frame-rate units: one frame per unit
    frame_rate = np.concatenate(list(meta.stream(toks, dur_pred=False, chunk_frames=chunk_frames)))
    np.testing.assert_allclose(frame_rate, meta.synthesize("".join(toks), dur_pred=False), atol=1e-6)
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


def _loud_generator(rates, kernels, rk, dil, *, source: bool = False, fold: bool = True, seed: int = 0, channels: int = 32) -> UnitHifiGAN:
    """An untrained generator with loud gains; ``fold``: weight norm folded (the CPU channels-last path)."""
    torch.manual_seed(seed)
    cfg = VocoderConfig.preset("tiny", num_pitch=0, num_style=0, num_speakers=0, embedding_dim=8, upsample_initial_channel=channels,
                               upsample_rates=rates, upsample_kernel_sizes=kernels, resblock_kernel_sizes=rk,
                               resblock_dilation_sizes=dil, harmonic_source=source, duration_predictor=False)
    model = UnitHifiGAN(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("original0"):
                p.uniform_(0.5, 1.5)
    if fold:
        model.remove_weight_norm()
    return model


def _random_layout(rng) -> tuple:
    """Upsampling rates with product 640 (odd and even strides), kernels k >= u with k - u even,
    1–3 residual kernels with 1–3 dilations each."""
    rates = [[5, 4, 4, 4, 2], [10, 8, 8], [16, 8, 5], [2, 5, 64], [20, 32]][rng.integers(5)]
    kernels = [u + 2 * int(rng.integers(0, 4)) if u > 1 else 1 for u in rates]
    nk = int(rng.integers(1, 4))
    rk = sorted(rng.choice([3, 5, 7, 11], nk, replace=False).tolist())
    dil = [sorted(rng.choice([1, 2, 3, 5], int(rng.integers(1, 4)), replace=False).tolist()) for _ in rk]
    return rates, kernels, rk, dil


def _push_in_pieces(gen: StreamingGenerator, x: torch.Tensor, excitation, cuts: list[int], hop: int) -> torch.Tensor:
    """Pushes frames ``[prev, cut)`` for each cut, then the rest with ``final``; checks that each
    non-final push returns exactly the ``final_samples`` promised, and at least what a window
    over ``context_frames`` would (the latency of windowed streaming)."""
    out, prev, total = [], 0, 0
    T = x.size(-1)
    for c in [*cuts, T]:
        exc = None if excitation is None else excitation[..., prev * hop : c * hop]
        out.append(gen.push(x[..., prev:c], exc, final=c == T))
        if c < T:
            total += out[-1].numel()
            assert total == gen.final_samples(c), (cuts, c, total, gen.final_samples(c))
        prev = c
    return torch.cat(out)


@pytest.mark.parametrize("seed", range(8))
def test_streaming_generator_equals_forward_on_random_layouts(seed):
    """Random upsampling / residual layouts, lengths down to one frame (shorter than the receptive
    field: all audio comes at the final flush), pieces of one frame and random pieces: the
    concatenated pushes equal the whole forward (an off-by-one in a transposed convolution's
    inputs, a residual's or a mean's alignment, or the edge padding shifts samples by far more)."""
    rng = np.random.default_rng(seed)
    rates, kernels, rk, dil = _random_layout(rng)
    source = bool(seed % 2)
    fold = seed % 4 < 2  # folded: channels-last [1, C, 1, T]; else 1-D with weight norm
    model = _loud_generator(rates, kernels, rk, dil, source=source, fold=fold, seed=seed)
    hop, S = model.hop, model.config.f0_frames_per_unit
    for T in (1, 2, 3, int(rng.integers(4, 12)), 40):
        x = torch.randn(1, model.config.in_channels, T)
        f0 = torch.where(torch.rand(1, T * S) < 0.7, torch.rand(1, T * S) * 300 + 60, torch.zeros(1, T * S)) if source else None
        with torch.inference_mode():
            whole = model.vocode(x, f0=f0)[0, 0]
            excitation = model.source.excitation(f0) if source else None
            assert whole.abs().max() > 1e-3  # a misplaced sample differs by about the peak; rounding by < 1e-6
            for cuts in ([], list(range(1, T)), sorted(set(rng.integers(1, T + 1, 4).tolist()) - {T})):
                gen = StreamingGenerator(model, model.source_convs, x.dtype, x.device)
                assert gen.layout.cl == fold
                got = _push_in_pieces(gen, x, excitation, cuts, hop)
                assert got.shape == whole.shape, (rates, T, cuts)
                assert (got - whole).abs().max() < 1e-6, (rates, kernels, rk, dil, T, cuts, float((got - whole).abs().max()))
        ctx = model.context_frames
        # final_samples' affine shortcut is the layer-by-layer count, and never later than a window
        # with context_frames each side (the latency of windowed streaming)
        assert all(gen.final_samples(n) == gen._count(n) >= (n - ctx) * hop for n in range(3 * ctx))


def test_stream_of_utterances_shorter_than_the_receptive_field(with_source):
    """One to three units: nothing is final before the end; the flush gives synthesize's audio."""
    meta = make_vocoder(False, layout="meta")
    for voc, tol in ((meta, 1e-6), (with_source, 1e-4)):
        for n in (1, 2, 3):
            toks = lm_tokens(n, seed=n, pitch_every=1)
            chunks = list(voc.stream(toks, chunk_frames=1))
            whole = voc.synthesize("".join(toks))
            assert len(chunks) == 1 and chunks[0].shape == whole.shape
            np.testing.assert_allclose(chunks[0], whole, atol=tol)


def test_streaming_generator_takes_the_fast_paths_where_vocode_does():
    """Kernel-11 convolutions at 64+ channels run as FFT convolutions in CPU inference
    (vocoder/fftconv.py), kernel-3 ones at 128+ as Winograd convolutions (vocoder/winograd.py):
    pushes long enough for the FFT take it too, shorter ones the direct path, and every push of a
    Winograd layer takes it (the module's own forward, its padded edge outputs cut); the audio is
    whole synthesis' (the tiles fall differently: within float rounding)."""
    model = _loud_generator([5, 4, 4, 4, 2], [11, 8, 8, 8, 4], [3, 11], [[1, 3], [1, 3]], channels=256)
    x = torch.randn(1, model.config.in_channels, 60)
    with torch.inference_mode():
        whole = model.vocode(x)[0, 0]
        for cuts in ([], [25, 50], list(range(1, 60))):
            gen = StreamingGenerator(model, None, x.dtype, x.device)
            convs = [c for stage in gen.blocks for b in stage for c in b.c2]
            k11 = [c for c in convs if c.k == 11]
            k3_wide = [c for c in convs if c.k == 3 and c.c_in >= 128]
            assert k3_wide and k11 and len(k3_wide) + len(k11) < len(convs)
            assert any(c._fast(500) for c in k11) and not any(c._fast(100) for c in k11)
            assert all(c._fast(1) for c in k3_wide) and not any(c._fast(500) for c in convs if c.c_in < 64)
            got = _push_in_pieces(gen, x, None, cuts, model.hop)
            assert got.shape == whole.shape and (got - whole).abs().max() < 1e-6, (cuts, float((got - whole).abs().max()))
