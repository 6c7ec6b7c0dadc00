"""benchmarks/bench_fftconv.py's generator-level modes on a short ``base`` utterance: ``--in_generator``
times every 64+-channel residual-block convolution on each path and reports the path the rules
pick, ``--generator`` compares the switches with speechbrain (paired ratios); both leave the
rules and modules as they were."""

import os
import sys

import spiritlm.vocoder.generator as gen

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import bench_fftconv  # noqa: E402


def test_in_generator_rows_and_rules_restored():
    rules = gen.fft_block_size, gen.winograd_tile
    rows = bench_fftconv.main(["--in_generator", "--rounds", "1", "--seconds", "2", "--blocks", "32,64"])
    assert (gen.fft_block_size, gen.winograd_tile) == rules
    # base: stages of 256 / 128 / 64 channels x kernels 3, 7, 11 x 2 convolutions x 3 dilations
    assert len(rows) == 3 * 3 * 6 and {r["c"] for r in rows} == {256, 128, 64}
    for r in rows:
        assert r["direct_ms"] > 0
        assert (r["winograd_ms"] is not None) == (r["k"] in (3, 7))
        assert set(r["fft_ms"]) == ({32, 64} if r["k"] >= 7 else set())
        conv = gen.WNConv1d(r["c"], r["c"], r["k"], r["d"])
        assert r["rule"] == conv.fast_path(r["steps"])
    assert any(r["rule"] == ("winograd", 6) and r["k"] == 7 for r in rows) and any(r["rule"] == ("fft", 32) for r in rows)


def test_generator_paths_and_paired_ratios():
    (res,) = bench_fftconv.main(["--generator", "--rounds", "2", "--seconds", "0.5"])
    assert set(res) == {"speechbrain stock (reflection)", "speechbrain zero padding", "ours, all direct", "ours, FFT only",
                        "ours, FFT + Winograd, stages whole", "ours, FFT + Winograd (default)"}
    assert res["speechbrain stock (reflection)"]["paired_ratio_median"] == 1.0
    for k, r in res.items():
        assert r["thread_min"] > 0 and r["paired_ratio_q25"] <= r["paired_ratio_median"] <= r["paired_ratio_q75"]
        if k.startswith("ours") or k.endswith("zero padding"):
            assert r["max_abs_diff"] < 1e-5  # the edges differ only with speechbrain's reflection padding
