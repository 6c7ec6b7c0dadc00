"""benchmarks/bench_stream_push.py's per-stage breakdown (``--stages``) on the tiny preset: one row per
generator stage with its push size in steps and its weight bytes, times measured on both paths, and
the model left as it was (no timing hooks, same audio)."""

import os
import sys

import torch

from spiritlm.vocoder.generator import WNConv1d

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import bench_stream_push  # noqa: E402


def test_stage_rows_and_model_left_unchanged(capsys):
    torch.set_num_threads(1)
    voc = bench_stream_push.build("tiny", None)
    model = voc.model
    x = torch.randn(1, model.conv_pre.conv.in_channels, 6)
    with torch.inference_mode():
        before = model.vocode(x)
    rows = bench_stream_push.measure(voc, 0.4, [5], rounds=1, profile=None, stages=5)
    stage_rows = [r for r in rows if r.get("stage_row")]
    assert len(stage_rows) == model.num_upsamples
    rate = 1
    for i, r in enumerate(stage_rows):
        rate *= model.upsample_rates[i]
        assert r["stage"] == i and r["steps_per_push"] == 5 * rate
        assert r["channels"] == model.ups[i].conv.out_channels
        mods = [model.ups[i], *model.resblocks[i * model.num_kernels:(i + 1) * model.num_kernels]]
        assert abs(r["weights_mb"] * 2**20 - sum(4 * p.numel() for m in mods for p in m.parameters())) < 1
        assert r["whole_ms"] > 0 and r["stream_ms"] > 0 and r["conv_hot_ms"] > 0 and r["conv_cold_ms"] > 0 and r["conv_cold_written_ms"] > 0
        # the kernels' bytes on the paths a push takes (tiny: Winograd for its 64-channel kernels of 7, else direct)
        convs = [m for b in model.resblocks[i * model.num_kernels:(i + 1) * model.num_kernels] for m in b.modules()
                 if isinstance(m, WNConv1d)]
        assert r["conv_convs"] == len(convs)
        assert r["conv_fast_convs"] == sum(m.fast_path(r["steps_per_push"] + m.conv.dilation[0] * (m.conv.kernel_size[0] - 1)) is not None
                                           for m in convs)
        direct_mb = sum(m.conv.weight.numel() * 4 for m in convs) / 2**20
        assert (r["conv_kernel_mb"] > direct_mb + 1e-6) == (r["conv_fast_convs"] > 0)
    assert any(r["conv_fast_convs"] for r in stage_rows) and not all(r["conv_fast_convs"] for r in stage_rows)
    assert all(not b._forward_hooks and not b._forward_pre_hooks for b in model.resblocks)
    with torch.inference_mode():
        assert torch.equal(model.vocode(x), before)
    out = capsys.readouterr().out
    assert "residual blocks per stage" in out and "kernels read again every push" in out
