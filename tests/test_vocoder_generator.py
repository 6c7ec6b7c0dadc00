"""Our HiFi-GAN generator against speechbrain's stock ``HifiganGenerator``: same tensor names, same audio.

speechbrain's ``Conv1d`` pads with reflection; with its ``padding_mode`` set to zeros (an option of
speechbrain's own class, the forward untouched) its generator is the reference for ours.
"""

from __future__ import annotations

import pytest
import torch
from speechbrain.lobes.models.HifiGAN import HifiganGenerator
from speechbrain.nnet.CNN import Conv1d as SBConv1d

from spiritlm.vocoder import fftconv as fftconv_mod
from spiritlm.vocoder import generator as generator_mod
from spiritlm.vocoder.fftconv import fft_block_size, fft_conv, weight_spectrum
from spiritlm.vocoder import winograd as winograd_mod
from spiritlm.vocoder.winograd import kernel_transform, winograd_conv, winograd_matrices, winograd_tile
from spiritlm.vocoder.generator import HifiGANGenerator

LAYOUTS = {
    "meta": dict(upsample_initial_channel=32, upsample_rates=[5, 4, 4, 4, 2], upsample_kernel_sizes=[11, 8, 8, 8, 4],
                 resblock_kernel_sizes=[3, 7, 11], resblock_dilation_sizes=[[1, 3, 5]] * 3),
    "tiny": dict(upsample_initial_channel=32, upsample_rates=[10, 8, 8], upsample_kernel_sizes=[20, 16, 16],
                 resblock_kernel_sizes=[3, 7], resblock_dilation_sizes=[[1, 3, 5]] * 2),
}


def stock_generator(c_in: int, layout: dict, zero_padding: bool) -> HifiganGenerator:
    g = HifiganGenerator(c_in, 1, "1", layout["resblock_dilation_sizes"], layout["resblock_kernel_sizes"],
                         layout["upsample_kernel_sizes"], layout["upsample_initial_channel"], layout["upsample_rates"],
                         inference_padding=0)
    if zero_padding:
        for m in g.modules():
            if isinstance(m, SBConv1d):
                m.padding_mode = "constant"
    return g.eval()


@pytest.mark.parametrize("name", ["meta", "tiny"])
@pytest.mark.parametrize("fold", [False, True])
def test_same_state_dict_and_audio_as_speechbrain(name, fold):
    torch.manual_seed(0)
    layout = LAYOUTS[name]
    ours = HifiGANGenerator(12, **layout).eval()
    with torch.no_grad():  # weight-norm gains large enough for loud audio
        for k, p in ours.named_parameters():
            if k.endswith("original0"):
                p.uniform_(0.5, 1.5)
    stock = stock_generator(12, layout, zero_padding=True)
    assert set(stock.state_dict()) == set(ours.state_dict())  # speechbrain's layout, name for name
    stock.load_state_dict(ours.state_dict(), strict=True)
    if fold:
        ours.remove_weight_norm()
        stock.remove_weight_norm()
        assert not ours.has_weight_norm
        stock.load_state_dict(ours.state_dict(), strict=True)  # folded names match too
    x = torch.randn(2, 12, 9)
    with torch.no_grad():
        ref, got = stock(x), ours(x)
    assert got.shape == ref.shape == (2, 1, 9 * 640) and ref.abs().max() > 0.1
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    # a padded batch gives each row its own audio (zero padding + masking)
    with torch.no_grad():
        padded = ours(x, torch.tensor([9, 5]))
        alone = stock(x[1:, :, :5])[0]
    torch.testing.assert_close(padded[1, :, : 5 * 640], alone, atol=1e-5, rtol=0)
    assert padded[1, :, 5 * 640 :].abs().max() == 0


def test_stock_reflection_differs_only_near_the_edges():
    torch.manual_seed(1)
    layout = LAYOUTS["tiny"]
    ours = HifiGANGenerator(12, **layout).eval()
    with torch.no_grad():
        for k, p in ours.named_parameters():
            if k.endswith("original0"):
                p.uniform_(0.5, 1.5)
    stock = stock_generator(12, layout, zero_padding=False)  # speechbrain as shipped
    stock.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(1, 12, 30)
    with torch.no_grad():
        diff = (stock(x) - ours(x)).abs()[0, 0]
    assert diff[:640].max() > 1e-3 and diff[10 * 640 : 20 * 640].max() < 1e-5


@pytest.mark.parametrize("module", [generator_mod, fftconv_mod, winograd_mod])
def test_doctests(module):
    import doctest

    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


def test_cpu_inference_runs_channels_last_and_follows_weight_changes():
    torch.manual_seed(2)
    g = HifiGANGenerator(12, **LAYOUTS["tiny"]).eval()
    x = torch.randn(1, 12, 7)
    assert not g.channels_last(x)  # weight norm: the training layout
    g.remove_weight_norm()
    assert not g.channels_last(x)  # gradients to the weights: the 1-D path
    with torch.no_grad():
        assert g.channels_last(x)
        before = g(x)
        conv = g.resblocks[0].convs1[0].conv
        conv.weight.mul_(1.5)  # in place: the cached channels-last copy is rebuilt
        changed = g(x)
        with torch.enable_grad():
            g.requires_grad_(False)
            plain = g(x)  # no gradient needed: also channels-last
        g.channels_last = lambda x: False  # the 1-D path, for reference
        ref = g(x)
    assert (changed - before).abs().max() > 1e-4
    torch.testing.assert_close(changed, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(plain, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("n", [1, 6, 300])
def test_onednn_packed_weights_equal_conv2d(monkeypatch, n):
    """Channels-last convolutions run on a weight packed once for oneDNN: the same values as
    ``F.conv2d`` (every conv kind the generator and a stream use, short and long inputs), the
    packed copy follows in-place weight changes, is left out of copies, and autocast's bfloat16
    takes ``F.conv2d``."""
    import copy

    if generator_mod._ONEDNN is None:
        pytest.skip("torch built without oneDNN")
    torch.manual_seed(7)
    convs = [generator_mod.WNConv1d(16, 24, 7, 3), generator_mod.WNConv1d(16, 16, 3),
             generator_mod.WNConvTranspose1d(16, 8, 8, 4)]
    x = torch.randn(2, 16, 1, n).contiguous(memory_format=torch.channels_last)
    for m in convs:  # folded outside inference mode, as Vocoder does: the weights keep a version counter
        torch.nn.utils.parametrize.remove_parametrizations(m.conv, "weight")
    with torch.inference_mode():
        for m in convs:
            transposed = isinstance(m, generator_mod.WNConvTranspose1d)
            pads = [None] + ([0] if transposed or n >= 19 else []) + ([1] if not transposed and n >= 19 else [])
            for pad in pads:  # the layer's own padding / crop, none (a stream's), another
                packed = m.conv_cl(x, pad)
                assert (m._derived or {}).get("packed") is not None and m._derived["packed"].is_mkldnn
                monkeypatch.setattr(generator_mod, "_ONEDNN", None)
                plain = m.conv_cl(x, pad)
                monkeypatch.undo()
                assert packed.shape == plain.shape
                torch.testing.assert_close(packed, plain, atol=1e-6, rtol=1e-5)
            before = m.conv_cl(x)
            m.conv.weight.mul_(-2.0)  # in place: repacked
            torch.testing.assert_close(m.conv_cl(x), before * -2.0 + m.conv.bias.view(1, -1, 1, 1) * 3.0, atol=1e-5, rtol=1e-5)
            twin = copy.deepcopy(m)  # the packed copy has no storage: copies rebuild it
            assert (twin._derived or {}).get("packed") is None
            torch.testing.assert_close(twin.conv_cl(x), m.conv_cl(x), atol=0, rtol=0)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                assert m.conv_cl(x).dtype == torch.bfloat16


# FFT (overlap-save) convolutions: the channels-last inference path of the large-kernel, many-channel convolutions

FFT_CASES = [(k, d, n) for k in (3, 7, 11) for d in (1, 3, 5) for n in (1, 5, 20, 37, 300)]


def _assert_fast_conv_equals_direct(conv, k, d, n, atol):
    """``conv(x, bias, residual)`` (a fast path with its kernel bound) against ``F.conv1d`` for a
    6 <- 5 channel layer of kernel ``k``, dilation ``d``, ``n`` steps (two rows): equal within
    ``atol``, channels-last; the residual added; a batch of one gets its own strides."""
    torch.manual_seed(k * 100 + d * 10 + n)
    w = torch.randn(6, 5, k) / (5 * k) ** 0.5
    bias = torch.randn(6)
    x = torch.randn(2, 5, 1, n).contiguous(memory_format=torch.channels_last)
    ref = torch.nn.functional.conv1d(x[:, :, 0], w, bias, padding=d * (k - 1) // 2, dilation=d)
    residual = torch.randn(2, 6, 1, n).contiguous(memory_format=torch.channels_last)
    got = conv(w, x, bias, None)
    assert got.shape == (2, 6, 1, n) and got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got[:, :, 0], ref, atol=atol, rtol=0)
    torch.testing.assert_close(conv(w, x, bias, residual), got + residual, atol=1e-6, rtol=0)
    one = conv(w, x[1:], None, None)  # a batch of one: a view of a longer buffer
    assert one.stride() == (6 * n, 1, 6 * n, 6)
    torch.testing.assert_close(one[:, :, 0] + bias[:, None], ref[1:], atol=atol, rtol=0)


@pytest.mark.parametrize("k,d,n", FFT_CASES)
def test_fft_conv_equals_direct_conv(k, d, n):
    """Every kernel / dilation / length, incl. inputs shorter than the kernel's span (zero padding at
    both edges); two block sizes, the smallest the span allows and a larger one. Float32: within
    1e-5 for inputs and outputs of unit scale."""
    for block in (1 << k.bit_length(), 4 << k.bit_length()):
        _assert_fast_conv_equals_direct(
            lambda w, x, bias, res: fft_conv(x, weight_spectrum(w, block), bias, k, d, block, residual=res), k, d, n, 1e-5)


def _assert_base_sized_layers_close(convolve, cases, seed: int, exact: bool, atol: float) -> None:
    """``convolve(w, x, c, k, d, t)`` (a fast path at its rule's block or tile) on ``base``-sized
    ``c → c`` layers of kernel ``k``, dilation ``d``, ``t`` steps, against ``F.conv1d`` (``exact``:
    in float64, the tolerance a share of the output's scale): close everywhere, the first and last
    outputs (zero padding) too."""
    torch.manual_seed(seed)
    for c, k, d, t in cases:
        w = torch.randn(c, c, k) / (c * k) ** 0.5
        x = torch.randn(1, c, 1, t).contiguous(memory_format=torch.channels_last)
        got = convolve(w, x, c, k, d, t)[:, :, 0]
        if exact:
            ref = torch.nn.functional.conv1d(x[:, :, 0].double(), w.double(), padding=d * (k - 1) // 2, dilation=d).float()
        else:
            ref = torch.nn.functional.conv1d(x[:, :, 0], w, padding=d * (k - 1) // 2, dilation=d)
        tol = atol * float(ref.abs().max()) if exact else atol
        torch.testing.assert_close(got, ref, atol=tol, rtol=0)
        torch.testing.assert_close(got[..., :30], ref[..., :30], atol=tol, rtol=0)
        torch.testing.assert_close(got[..., -30:], ref[..., -30:], atol=tol, rtol=0)


def test_fft_conv_many_channels_and_edges():
    """``base``-sized layers (128 / 256 channels, kernels 11 and 7, dilations 1 / 3 / 5, the rule's
    block): equal to the direct convolution within 2e-5 at unit scale, the first and last outputs
    (zero padding) too."""

    def convolve(w, x, c, k, d, t):
        block = fft_block_size(c, c, k, d, t)
        assert block is not None
        return fft_conv(x, weight_spectrum(w, block), None, k, d, block)

    cases = ((128, 11, 1, 2000), (256, 11, 1, 500), (256, 11, 5, 500), (128, 7, 3, 2000), (64, 11, 5, 1001))
    _assert_base_sized_layers_close(convolve, cases, seed=3, exact=False, atol=2e-5)


def test_fft_block_size_rule():
    # base's stages (256 x 500, 128 x 2000, 64 x 8000, 32 x 32000 for 4 s): kernels of 11 from 64
    # channels and of 7 at 128, any dilation (per phase); kernels of 3 and fewer channels direct
    for d in (1, 3, 5):
        assert fft_block_size(256, 256, 11, d, 500) == 32 and fft_block_size(128, 128, 11, d, 2000) == 64
        assert fft_block_size(64, 64, 11, d, 8000) == 64 and fft_block_size(32, 32, 11, d, 32000) is None
        assert fft_block_size(128, 128, 7, d, 2000) == 64
        assert fft_block_size(256, 256, 7, d, 500) is None and fft_block_size(64, 64, 7, d, 8000) is None
        assert fft_block_size(128, 128, 3, d, 2000) is None and fft_block_size(256, 256, 3, d, 500) is None
    assert fft_block_size(512, 256, 11, 1, 176) == 32 and fft_block_size(64, 512, 11, 1, 176) is None
    assert fft_block_size(256, 256, 11, 5, 175) is None  # eight blocks of 22: a stream's short pushes run direct
    assert fft_block_size(128, 128, 11, 3, 431) is None and fft_block_size(128, 128, 11, 3, 432) == 64  # eight blocks of 54
    for c in (64, 128, 256, 512):
        for k in (3, 7, 11, 13, 15, 31, 41):
            for d in (1, 3, 5):
                n = fft_block_size(c, c, k, d, 10**6)
                assert n is None or n >= 2 * (k - 1)  # at least half of each block is output


# Winograd convolutions: the channels-last inference path of kernels of 3 and 7 at many channels


@pytest.mark.parametrize("tile,k", [(6, 3), (4, 7), (2, 3), (2, 7)])
def test_winograd_matrices_compute_the_correlation_exactly(tile, k):
    """In float64, ``Aᵀ ((G g) ⊙ (Bᵀ d))`` is the correlation of a tile: ``y_i = Σ_j g_j d_{i+j}``."""
    torch.manual_seed(tile * 10 + k)
    a_t, g_mat, b_t = winograd_matrices(tile, k)
    alpha = tile + k - 1
    assert a_t.shape == (tile, alpha) and g_mat.shape == (alpha, k) and b_t.shape == (alpha, alpha)
    g, d = torch.randn(k, dtype=torch.float64), torch.randn(alpha, dtype=torch.float64)
    ref = torch.stack([(g * d[i:i + k]).sum() for i in range(tile)])
    torch.testing.assert_close(a_t @ ((g_mat @ g) * (b_t @ d)), ref, atol=1e-12, rtol=0)


WINOGRAD_CASES = [(k, d, n) for k in (3, 7) for d in (1, 3, 5) for n in (1, 5, 20, 37, 300)]


@pytest.mark.parametrize("k,d,n", WINOGRAD_CASES)
def test_winograd_conv_equals_direct_conv(k, d, n):
    """Every kernel / dilation / length, incl. inputs shorter than the kernel's span and than one
    tile (zero padding at both edges); the rule's tile and the smallest: within 2e-5 at unit scale,
    5e-5 for ``F(6, 7)`` (tiles of 12 inputs: its transforms' float32 rounding, winograd.py)."""
    for tile in {winograd_tile(128, 128, k, d, n), 2}:
        _assert_fast_conv_equals_direct(lambda w, x, bias, res: winograd_conv(x, kernel_transform(w, tile), bias, k, d, tile, residual=res),
                                        k, d, n, 5e-5 if tile + k - 1 >= 12 else 2e-5)


def test_winograd_conv_many_channels_and_edges():
    """``base``-sized layers (the rule's tiles, dilations 1 / 3 / 5): within 3e-5 of the output's
    scale of the exact (float64) convolution (float32 rounding of the transforms: up to ~13x the
    direct path's for ``F(6, 7)``; outputs reach ~5 here), the first and last outputs (zero
    padding) too."""

    def convolve(w, x, c, k, d, t):
        tile = winograd_tile(c, c, k, d, t)
        assert tile is not None
        return winograd_conv(x, kernel_transform(w, tile), None, k, d, tile)

    cases = ((256, 7, 1, 500), (256, 3, 5, 500), (128, 7, 3, 2000), (64, 7, 5, 1001), (128, 3, 1, 2000))
    _assert_base_sized_layers_close(convolve, cases, seed=7, exact=True, atol=3e-5)


def test_winograd_tile_rule():
    # base's stages (256 x 500, 128 x 2000, 64 x 8000, 32 x 32000 for 4 s): kernels of 7 from 64
    # channels (F(6, 7)), of 3 from 128 (F(6, 3)), any dilation and length; kernels of 11 and fewer
    # channels elsewhere
    for d in (1, 3, 5):
        for n in (1, 125, 500, 8000):
            assert winograd_tile(256, 256, 7, d, n) == 6 and winograd_tile(64, 64, 7, d, n) == 6
            assert winograd_tile(256, 256, 3, d, n) == 6 and winograd_tile(128, 128, 3, d, n) == 6
            assert winograd_tile(64, 64, 3, d, n) is None and winograd_tile(32, 32, 7, d, n) is None
            assert winograd_tile(256, 256, 11, d, n) is None and winograd_tile(512, 512, 5, d, n) is None
    assert winograd_tile(64, 512, 7, 1, 100) == 6 and winograd_tile(512, 32, 7, 1, 100) is None


def test_fast_path_prefers_winograd_and_follows_the_switches():
    m = generator_mod.WNConv1d(128, 128, 7, 3)
    assert m.fast_path(2000) == ("winograd", 6)
    m.use_winograd = False
    assert m.fast_path(2000) == ("fft", 64) and m.fast_path(100) is None
    m.use_fft = False
    assert m.fast_path(2000) is None
    assert generator_mod.WNConv1d(256, 256, 11).fast_path(500) == ("fft", 32)


def _count_calls(monkeypatch, name: str) -> list:
    """The input shapes of every call of ``generator.<name>`` (``fft_conv``, ``winograd_conv``)."""
    calls = []
    real = getattr(generator_mod, name)

    def counting(x, *a, **kw):
        calls.append(x.shape)
        return real(x, *a, **kw)

    monkeypatch.setattr(generator_mod, name, counting)
    return calls


def _count_fft_calls(monkeypatch) -> list:
    return _count_calls(monkeypatch, "fft_conv")


def _count_winograd_calls(monkeypatch) -> list:
    return _count_calls(monkeypatch, "winograd_conv")


def test_base_generator_with_fast_convs_equals_speechbrain(monkeypatch):
    """Meta's ``base`` layout at full size (512 channels, kernels 3 / 7 / 11), one 4 s utterance
    (100 frames), loud weights, weight norm folded: with the FFT and Winograd convolutions on (the
    default), with FFT only, all direct, and with its stages tiled, the audio equals speechbrain's
    stock generator (zero padding) within 1e-5."""
    torch.manual_seed(4)
    layout = dict(LAYOUTS["meta"], upsample_initial_channel=512)
    ours = HifiGANGenerator(64, **layout).eval()
    with torch.no_grad():
        for k, p in ours.named_parameters():
            if k.endswith("original0"):
                p.uniform_(0.5, 1.5)
    ours.remove_weight_norm()
    stock = stock_generator(64, layout, zero_padding=True)
    stock.remove_weight_norm()
    stock.load_state_dict(ours.state_dict(), strict=True)
    fft = _count_fft_calls(monkeypatch)
    wino = _count_winograd_calls(monkeypatch)
    x = torch.randn(1, 64, 100)
    with torch.inference_mode():
        assert ours.fft_convs and ours.winograd_convs
        got = ours(x)
        # kernels of 11 at 256 / 128 / 64 channels by FFT (6 each); kernels of 7 at 256 / 128 / 64
        # and of 3 at 256 / 128 by Winograd (6 each), and conv_pre (64 -> 512, kernel 7)
        assert (len(fft), len(wino)) == (18, 31)
        ref = stock(x)
        ours.winograd_convs = False
        fft_only = ours(x)
        assert (len(fft), len(wino)) == (18 + 24, 31)  # kernels of 7 at 128 go back to the FFT path
        ours.fft_convs = False
        direct = ours(x)
        assert (len(fft), len(wino)) == (42, 31)
        # the 128-, 64-, 32- and 16-channel stages tile by tile (512 / 1,024 / 2,048 / 4,096 steps),
        # FFT and Winograd convolutions inside the tiles
        ours.fft_convs = ours.winograd_convs = True
        monkeypatch.setattr(generator_mod, "STAGE_TILE_BYTES", 1 << 18)
        monkeypatch.setattr(generator_mod, "MIN_TILE_REACHES", 0)
        stages = _spy_stages(monkeypatch)
        tiled = ours(x)
        assert len(stages) == 1 + 4 + 8 + 16 + 16 and len(fft) > 42 + 18
    assert ref.abs().max() > 0.1
    for path in (got, fft_only, direct, tiled):
        torch.testing.assert_close(path, ref, atol=1e-5, rtol=0)


def test_tiny_with_harmonic_source_fast_paths(monkeypatch):
    """The ``tiny`` preset (harmonic source, 64 channels and fewer, kernels 3 / 7): no FFT
    convolution; ``conv_pre`` (96 -> 128) and the first stage's six kernel-7 convolutions (64
    channels) are Winograd ones, and switching them off changes the audio by float rounding only;
    its stages tiled (the excitation injected before them) give the same audio."""
    from spiritlm.vocoder import VocoderConfig
    from spiritlm.vocoder.model import UnitHifiGAN

    torch.manual_seed(5)
    model = UnitHifiGAN(VocoderConfig.preset("tiny", num_speakers=2)).eval()
    model.remove_weight_norm()
    fft = _count_fft_calls(monkeypatch)
    wino = _count_winograd_calls(monkeypatch)
    units = torch.randint(0, model.config.num_units, (1, 40))
    cfg = model.config
    pitch = torch.randint(0, cfg.num_pitch, (1, 20)) if cfg.num_pitch else None
    style = torch.randint(0, cfg.num_style, (1, 2)) if cfg.num_style else None
    assert cfg.harmonic_source
    with torch.inference_mode():
        on = model(units, pitch, style, torch.tensor([1]))
        assert (len(fft), len(wino)) == (0, 7)
        model.winograd_convs = False
        off = model(units, pitch, style, torch.tensor([1]))
        # every stage tile by tile, after the source's injection
        monkeypatch.setattr(generator_mod, "STAGE_TILE_BYTES", 4096)
        monkeypatch.setattr(generator_mod, "MIN_TILE_REACHES", 0)
        stages = _spy_stages(monkeypatch)
        tiled = model(units, pitch, style, torch.tensor([1]))
    assert (len(fft), len(wino)) == (0, 7)
    assert len(stages) > 3 * model.num_upsamples
    assert on.abs().max() > 1e-3
    torch.testing.assert_close(on, off, atol=1e-5, rtol=0)
    torch.testing.assert_close(tiled, off, atol=1e-6, rtol=0)


def test_fft_spectra_follow_weight_changes(monkeypatch):
    """The cached kernel spectra are rebuilt when a weight changes in place; a padded batch still
    gives each row its own audio."""
    torch.manual_seed(6)
    g = HifiGANGenerator(12, 128, [2], [4], [11], [[1, 3, 5]]).eval()
    g.remove_weight_norm()
    calls = _count_fft_calls(monkeypatch)
    x = torch.randn(2, 12, 250)
    with torch.inference_mode():
        before = g(x)
        assert len(calls) == 6  # the stage's kernels of 11 at 64 channels, the dilated ones per phase
        g.resblocks[0].convs2[1].conv.weight.mul_(1.5)  # an FFT convolution's weight
        changed = g(x)
        padded = g(x, torch.tensor([250, 120]))
        g.fft_convs = False
        ref = g(x)
        alone = g(x[1:, :, :120])
    assert (changed - before).abs().max() > 1e-4
    torch.testing.assert_close(changed, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(padded[1:, :, :240], alone, atol=1e-5, rtol=0)
    assert padded[1, :, 240:].abs().max() == 0


@pytest.mark.parametrize("k,dilations", [(3, [1, 3, 5]), (7, [1, 3]), (11, [2])])
def test_resblock_reach_is_its_receptive_field(k, dilations):
    """Changing one input step changes exactly the outputs within ``reach`` of it: what a tiled
    stage reads on either side of its tiles."""
    torch.manual_seed(7)
    block = generator_mod.ResBlock1(4, k, dilations).eval()
    x = torch.randn(1, 4, 300)
    y = x.clone()
    y[..., 150] += 1.0
    with torch.no_grad():
        changed = (block(y) - block(x)).abs().amax(dim=(0, 1)) > 0
    steps = changed.nonzero().flatten()
    assert (steps.min().item(), steps.max().item()) == (150 - block.reach, 150 + block.reach)
    assert block.reach == sum(d * (k - 1) // 2 + (k - 1) // 2 for d in dilations)


def test_stage_tile_rule(monkeypatch):
    # 2 MiB of float32 activations a tile (all rows of a batch together), once the stage is at least three tiles long
    assert generator_mod.stage_tile(16, 3 * 32768) == 32768
    assert generator_mod.stage_tile(16, 3 * 32768 - 1) is None
    assert generator_mod.stage_tile(16, 3 * 8192, batch=4) == 8192
    # many rows: tiles stay 16 reaches long (base's 60-step reach: 960 steps), not 2 MiB / rows
    assert generator_mod.stage_tile(16, 10**5, batch=64, reach=60) == 960
    assert generator_mod.stage_tile(16, 2879, batch=64, reach=60) is None
    assert generator_mod.stage_tile(16, 10**6, batch=1, reach=60) == 32768
    # base: a 4 s utterance's 32- and 16-channel stages run whole, a 9.1 s one's tile by tile
    assert generator_mod.stage_tile(32, 32000) is None and generator_mod.stage_tile(16, 64000) is None
    assert generator_mod.stage_tile(32, 72640) == 16384 and generator_mod.stage_tile(16, 145280) == 32768
    # 128 channels from 24.6 s; 256 never (its weights, read again per tile, cost more than the cache saves)
    assert generator_mod.stage_tile(128, 12288) == 4096 and generator_mod.stage_tile(256, 10**6) is None
    monkeypatch.setattr(generator_mod, "STAGE_TILE_BYTES", 1000)
    assert generator_mod.stage_tile(64, 20) == 3 and generator_mod.stage_tile(64, 8) is None


def _spy_stages(monkeypatch) -> list:
    """The length of every stage input :meth:`HifiGANGenerator._stage` runs on (whole or a tile)."""
    calls = []
    real = HifiGANGenerator._stage

    def spying(self, i, o, mask):
        calls.append(o.size(-1))
        return real(self, i, o, mask)

    monkeypatch.setattr(HifiGANGenerator, "_stage", spying)
    return calls


@pytest.mark.parametrize("tile_bytes", [16 * 4 * 10, 16 * 4 * 37])
def test_tiled_stages_equal_whole_stages(monkeypatch, tile_bytes):
    """Stages run tile by tile (tiles shorter and longer than the blocks' reach, the last one
    partial; one row, a batch of two, a padded batch) give the audio of whole stages."""
    torch.manual_seed(8)
    g = HifiGANGenerator(8, 32, [4, 2], [8, 4], [3, 7], [[1, 3], [1, 3, 5]]).eval()
    g.remove_weight_norm()
    monkeypatch.setattr(generator_mod, "STAGE_TILE_BYTES", tile_bytes)
    monkeypatch.setattr(generator_mod, "MIN_TILE_REACHES", 0)  # tiles shorter than the reach too
    calls = _spy_stages(monkeypatch)
    x = torch.randn(2, 8, 50)  # stages of 16 channels x 200 steps and 8 x 400
    lengths = torch.tensor([50, 23])
    with torch.inference_mode():
        assert g.tiled_stages
        one = g(x[:1])
        tiles = list(calls)
        calls.clear()
        two = g(x)
        padded = g(x, lengths)
        two_tiles = list(calls)
        g.tiled_stages = False
        whole = g(x)
        padded_whole = g(x, lengths)
    t0, t1 = tile_bytes // (16 * 4), tile_bytes // (8 * 4)
    reach = max(b.reach for b in g.resblocks)
    assert reach == 36 and (t0 < reach) == (tile_bytes == 16 * 4 * 10)
    expected = [min(200, a + t0 + reach) - max(0, a - reach) for a in range(0, 200, t0)]
    expected += [min(400, a + t1 + reach) - max(0, a - reach) for a in range(0, 400, t1)]
    assert tiles == expected
    # two rows: tiles of half the steps, when the stage is still three tiles long
    b0, b1 = t0 // 2, t1 // 2
    halves = [min(200, a + b0 + reach) - max(0, a - reach) for a in range(0, 200, b0)] if 200 >= 3 * b0 else [200]
    halves += [min(400, a + b1 + reach) - max(0, a - reach) for a in range(0, 400, b1)] if 400 >= 3 * b1 else [400]
    assert two_tiles == halves * 2 and len(halves) > 2
    assert whole.abs().max() > 1e-3 and padded_whole[1, :, 23 * 8:].abs().max() == 0
    torch.testing.assert_close(one, whole[:1], atol=1e-6, rtol=0)
    torch.testing.assert_close(two, whole, atol=1e-6, rtol=0)
    torch.testing.assert_close(padded, padded_whole, atol=1e-6, rtol=0)
