"""benchmarks/bench_stream_push.py's per-stage breakdown (``--stages``) on the tiny preset: one row per
generator stage with its push size in steps and its weight bytes, times measured on both paths, and
the model left as it was (no timing hooks, same audio)."""

import os
import sys

import torch

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
        assert r["whole_ms"] > 0 and r["stream_ms"] > 0 and r["conv_hot_ms"] > 0 and r["conv_cold_ms"] > 0
    assert all(not b._forward_hooks and not b._forward_pre_hooks for b in model.resblocks)
    with torch.inference_mode():
        assert torch.equal(model.vocode(x), before)
    out = capsys.readouterr().out
    assert "residual blocks per stage" in out and "weights in cache vs evicted" in out
