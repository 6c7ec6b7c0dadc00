"""Our HiFi-GAN generator against speechbrain's stock ``HifiganGenerator``: same tensor names, same audio.

speechbrain's ``Conv1d`` pads with reflection; with its ``padding_mode`` set to zeros (an option of
speechbrain's own class, the forward untouched) its generator is the reference for ours.
"""

from __future__ import annotations

import pytest
import torch
from speechbrain.lobes.models.HifiGAN import HifiganGenerator
from speechbrain.nnet.CNN import Conv1d as SBConv1d

from spiritlm.vocoder import generator as generator_mod
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


def test_doctests():
    import doctest

    result = doctest.testmod(generator_mod)
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
