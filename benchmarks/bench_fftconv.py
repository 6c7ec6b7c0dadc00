"""FFT (overlap-save) and Winograd against direct channels-last convolution, per residual-block layer of the `base` vocoder.

    OMP_NUM_THREADS=1 python benchmarks/bench_fftconv.py                 # base's stages for a 4 s utterance
    python benchmarks/bench_fftconv.py --shapes 128x2000 --kernels 11 --blocks 64,128
    python benchmarks/bench_fftconv.py --generator --rounds 11           # the whole base generator, FFT / Winograd on / off
    python benchmarks/bench_fftconv.py --in_generator --rounds 7         # each 64+-channel layer inside the generator: direct, FFT, Winograd

For every ``C × T`` stage shape (``base``, one 4 s utterance: 256 × 500 … 16 × 64,000), kernel and
dilation of the residual blocks, and FFT block size ``N`` (powers of two from 2 to 16 kernel lengths; a dilated layer runs per phase), a
random ``C → C`` convolution runs directly (``F.conv2d`` on ``[1, C, 1, T]`` channels-last, the
generator's CPU inference path) and through ``vocoder/fftconv.py``, alternating, ``--rounds``
times each. Times are this thread's CPU seconds (``time.thread_time``: robust to other processes
on a shared machine), min and median; "speedup" = direct ÷ FFT (min), and the max |difference|
for inputs of unit scale. The row's ``rule`` column is :func:`fftconv.fft_block_size`'s choice.

``--generator``: ``UnitHifiGAN.vocode`` of ``bench_vocoder.compare``'s ``base`` utterance (4 s, loud
random weights, weight norm folded) all direct, with FFT convolutions only, with FFT and Winograd
convolutions and every stage run whole, and as by default (FFT, Winograd, and long low-channel
stages run tile by tile: ``HifiGANGenerator.tiled_stages``), against speechbrain's stock
``HifiganGenerator`` (reflection, and zero padding) with the same weights, alternating; thread CPU
seconds and wall seconds, median and min, and the median (quartiles) of each round's stock ÷ path
ratio (paired rounds: robust to the machine's drift between rounds); the audio's max |difference|.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from spiritlm.vocoder.fftconv import fft_block_size, fft_conv, weight_spectrum
from spiritlm.vocoder.winograd import winograd_tile

#: the Winograd tile (outputs per tile) ``--in_generator`` forces for each kernel size, also on
#: layers the rule leaves direct: the rule's own tile for that kernel at 256 channels
WINOGRAD_TILES = {k: winograd_tile(256, 256, k, 1, 1) for k in (3, 7)}


def _times(fns: dict, rounds: int) -> dict:
    t: dict = {k: [] for k in fns}
    for f in fns.values():
        f()
    for _ in range(rounds):
        for k, f in fns.items():
            s = time.thread_time()
            f()
            t[k].append(time.thread_time() - s)
    return {k: (float(np.min(v)), float(np.median(v))) for k, v in t.items()}


def _base_utterance(seconds: float):
    """``(config, folded Vocoder, generator input [1, C, frames])``: the ``base`` preset with loud
    random weights and ``bench_vocoder``'s utterance of ``seconds``."""
    import sys

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bench_vocoder as bv

    from spiritlm.vocoder import Vocoder, VocoderConfig
    from spiritlm.vocoder.model import UnitHifiGAN

    cfg = VocoderConfig.preset("base", num_speakers=4)
    torch.manual_seed(0)
    model = UnitHifiGAN(cfg)
    bv._loud(model)
    voc = Vocoder(model)  # folds weight norm
    p = voc.prepare(bv.make_inputs(cfg, 1, seconds, seed=1)[0])
    x = voc.model.embed(torch.from_numpy(p["units"])[None], None, None, torch.tensor([0]), aligned=True)
    return cfg, voc, x


def generator(rounds: int, seconds: float) -> dict:
    """The ``--generator`` comparison (module docstring); returns ``{path: {thread/wall min/median}}``."""
    import copy

    from speechbrain.lobes.models.HifiGAN import HifiganGenerator
    from speechbrain.nnet.CNN import Conv1d as SBConv1d

    cfg, voc, x = _base_utterance(seconds)
    state = {k: v for k, v in voc.model.state_dict().items() if k.startswith(("conv_pre.", "ups.", "resblocks.", "conv_post."))}
    stock = HifiganGenerator(cfg.in_channels, 1, "1", cfg.resblock_dilation_sizes, cfg.resblock_kernel_sizes,
                             cfg.upsample_kernel_sizes, cfg.upsample_initial_channel, cfg.upsample_rates, inference_padding=0)
    stock.remove_weight_norm()
    stock.load_state_dict(state, strict=True)
    zero = copy.deepcopy(stock)
    for m in zero.modules():
        if isinstance(m, SBConv1d):
            m.padding_mode = "constant"

    def ours(fft: bool, winograd: bool, tiled: bool = True):
        voc.model.fft_convs, voc.model.winograd_convs, voc.model.tiled_stages = fft, winograd, tiled
        return voc.model.vocode(x)

    fns = {"speechbrain stock (reflection)": lambda: stock.eval()(x), "speechbrain zero padding": lambda: zero.eval()(x),
           "ours, all direct": lambda: ours(False, False), "ours, FFT only": lambda: ours(True, False),
           "ours, FFT + Winograd, stages whole": lambda: ours(True, True, False),
           "ours, FFT + Winograd (default)": lambda: ours(True, True)}
    tt: dict = {k: [] for k in fns}
    wt: dict = {k: [] for k in fns}
    with torch.inference_mode():
        out = {k: f() for k, f in fns.items()}
        for _ in range(rounds):
            for k, f in fns.items():
                a, b = time.thread_time(), time.perf_counter()
                f()
                tt[k].append(time.thread_time() - a)
                wt[k].append(time.perf_counter() - b)
    on = out["ours, FFT + Winograd (default)"]
    res = {}
    print(f"base, {x.size(-1) * cfg.unit_hop / cfg.sample_rate:.1f} s, {rounds} alternating rounds, load {os.getloadavg()[0]:.1f}")
    print("| path | thread s median (min) | wall s median (min) | stock ÷ this, thread median (min) | paired stock ÷ this, median (quartiles) | max abs diff vs default |")
    print("|---|---|---|---|---|---|")
    stock_t = np.array(tt["speechbrain stock (reflection)"])
    ref_med, ref_min = np.median(stock_t), np.min(stock_t)
    for k in fns:
        # paired: each round's stock time over this path's in the same round, so the machine's
        # drift between rounds (up to 25 % here) cancels
        paired = stock_t / np.array(tt[k])
        r = {"thread_median": float(np.median(tt[k])), "thread_min": float(np.min(tt[k])),
             "wall_median": float(np.median(wt[k])), "wall_min": float(np.min(wt[k])), "max_abs_diff": float((out[k] - on).abs().max()),
             "paired_ratio_median": float(np.median(paired)), "paired_ratio_q25": float(np.quantile(paired, 0.25)),
             "paired_ratio_q75": float(np.quantile(paired, 0.75))}
        res[k] = r
        print(f"| {k} | {r['thread_median']:.3f} ({r['thread_min']:.3f}) | {r['wall_median']:.3f} ({r['wall_min']:.3f}) | "
              f"{ref_med / r['thread_median']:.2f}× ({ref_min / r['thread_min']:.2f}×) | {r['paired_ratio_median']:.2f}× "
              f"({r['paired_ratio_q25']:.2f}–{r['paired_ratio_q75']:.2f}) | {r['max_abs_diff']:.1e} |")
    print(f"load at the end {os.getloadavg()[0]:.1f}")
    return res


def in_generator(rounds: int, seconds: float, blocks: list[int]) -> list[dict]:
    """``--in_generator``: every residual-block convolution at 64+ channels timed inside
    ``UnitHifiGAN.vocode`` of the ``base`` utterance (thread CPU seconds of its call, min over the
    rounds), with all of them direct, all of kernel 7+ FFT convolutions of each block size in
    ``blocks``, and all of kernel 3 and 7 Winograd convolutions (``F(6, 3)``, ``F(6, 7)``),
    alternating whole runs (the weights, spectra and transformed kernels as cold or warm as a real
    run has them, unlike a loop over one layer); the path :meth:`WNConv1d.fast_path` picks beside."""
    import spiritlm.vocoder.generator as gen

    _, voc, x = _base_utterance(seconds)
    layers = {name: m for name, m in voc.model.named_modules() if isinstance(m, gen.WNConv1d)
              and name.startswith("resblocks") and min(m.conv.in_channels, m.conv.out_channels) >= 64}
    modes: list = [None, *(("fft", b) for b in blocks), ("winograd", 0)]
    mode: dict = {"now": None}
    times: dict = {}

    def forced_fft(c_in, c_out, k, d, length):
        now = mode["now"]
        return now[1] if now is not None and now[0] == "fft" and min(c_in, c_out) >= 64 and k >= 7 else None

    def forced_winograd(c_in, c_out, k, d, length):
        now = mode["now"]
        return WINOGRAD_TILES.get(k) if now is not None and now[0] == "winograd" and min(c_in, c_out) >= 64 else None

    def timed(name, run):
        def f(*a, **kw):
            t = time.thread_time()
            y = run(*a, **kw)
            times.setdefault((name, mode["now"]), []).append(time.thread_time() - t)
            return y
        return f

    rules = gen.fft_block_size, gen.winograd_tile
    lengths = {}
    for name, m in layers.items():
        m.run_cl = timed(name, m.run_cl)
    try:
        gen.fft_block_size, gen.winograd_tile = forced_fft, forced_winograd
        with torch.inference_mode():
            for _ in range(rounds + 1):  # the first round builds the spectra and transformed kernels
                for mode["now"] in modes:
                    voc.model.vocode(x)
            x4 = x.size(-1)
            for name in layers:  # each layer's input length, from its stage
                stage = int(name.split(".")[1]) // voc.model.num_kernels
                lengths[name] = x4 * int(np.prod(voc.model.upsample_rates[:stage + 1]))
    finally:
        gen.fft_block_size, gen.winograd_tile = rules
        for m in layers.values():
            del m.run_cl
    print(f"base, {seconds:.1f} s, {rounds} rounds per mode (min thread CPU ms of each layer's call), load {os.getloadavg()[0]:.1f}")
    print("| layer | C | k | d | steps | direct | " + " | ".join(f"FFT N = {b}" for b in blocks) + " | Winograd | rule |")
    print("|---|---|---|---|---|---|" + "---|" * len(blocks) + "---|---|")
    rows = []
    for name, m in layers.items():
        c = m.conv
        t = {md: min(times[(name, md)][1:]) * 1e3 for md in modes}  # the first: spectra being built
        rule = m.fast_path(lengths[name])
        cells = [f"{t[md]:.2f}" if md[0] == "fft" and c.kernel_size[0] >= 7 or md[0] == "winograd" and c.kernel_size[0] in WINOGRAD_TILES
                 else "—" for md in modes[1:]]
        print(f"| {name} | {c.in_channels} | {c.kernel_size[0]} | {c.dilation[0]} | {lengths[name]} | {t[None]:.2f} | "
              + " | ".join(cells) + f" | {' '.join(map(str, rule)) if rule else 'direct'} |", flush=True)
        rows.append({"layer": name, "c": c.in_channels, "k": c.kernel_size[0], "d": c.dilation[0], "steps": lengths[name],
                     "direct_ms": t[None], "fft_ms": {b: t[("fft", b)] for b in blocks} if c.kernel_size[0] >= 7 else {},
                     "winograd_ms": t[("winograd", 0)] if c.kernel_size[0] in WINOGRAD_TILES else None, "rule": rule})
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="256x500,128x2000,64x8000,32x32000,16x64000", help="comma-separated CxT")
    p.add_argument("--kernels", default="7,11", help="comma-separated kernel sizes")
    p.add_argument("--dilations", default="1,3,5", help="comma-separated dilations")
    p.add_argument("--blocks", default="", help="comma-separated FFT block sizes (default: powers of two from 2 to 16 kernel lengths)")
    p.add_argument("--rounds", type=int, default=7, help="alternating rounds")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--generator", action="store_true", help="the whole base generator instead of single layers")
    p.add_argument("--in_generator", action="store_true",
                   help="each residual-block convolution at 64+ channels timed inside the base generator: direct, FFT (--blocks, default 32,64), Winograd")
    p.add_argument("--seconds", type=float, default=4.0, help="--generator / --in_generator: utterance length (s)")
    args = p.parse_args(argv)
    try:
        kernels = [int(k) for k in args.kernels.split(",")]
        blocks = [int(n) for n in args.blocks.split(",")] if args.blocks else []
    except ValueError:
        p.error(f"--kernels / --blocks: expected comma-separated integers, got {args.kernels!r} / {args.blocks!r}")
    if min(kernels) < 1:
        p.error(f"--kernels: kernel sizes must be >= 1, got {args.kernels!r}")
    longest = 11 if args.in_generator else max(kernels)
    if any(n <= longest for n in blocks):
        p.error(f"--blocks: every block must be longer than the longest kernel ({longest}), got {args.blocks!r}")
    torch.set_num_threads(args.threads)
    print(f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    if args.generator:
        return [generator(args.rounds, args.seconds)]
    if args.in_generator:
        return in_generator(args.rounds, args.seconds, blocks or [32, 64])
    torch.manual_seed(0)
    rows = []
    print("| C × T | k | d | span | direct ms (min / median) | rule N | N: speedup (min), max abs diff |")
    print("|---|---|---|---|---|---|---|")
    for shape in args.shapes.split(","):
        c, t = map(int, shape.split("x"))
        for k in kernels:
            for d in map(int, args.dilations.split(",")):
                span = d * (k - 1) + 1
                pad = (span - 1) // 2
                w = torch.randn(c, c, k) / (c * k) ** 0.5
                bias = torch.randn(c) * 0.1
                w2 = w.unsqueeze(2).contiguous(memory_format=torch.channels_last)
                x = torch.randn(1, c, 1, t).contiguous(memory_format=torch.channels_last)
                sizes = blocks or [1 << e for e in range(4, 13) if 2 * k <= 1 << e <= 16 * k]
                with torch.inference_mode():
                    ref = F.conv2d(x, w2, bias, padding=(0, pad), dilation=(1, d))
                    fns = {"direct": lambda: F.conv2d(x, w2, bias, padding=(0, pad), dilation=(1, d))}
                    diffs = {}
                    for n in sizes:
                        spec = weight_spectrum(w, n)
                        fns[n] = (lambda s, n: lambda: fft_conv(x, s, bias, k, d, n))(spec, n)
                        diffs[n] = float((fns[n]() - ref).abs().max())
                    res = _times(fns, args.rounds)
                dmin, dmed = res["direct"]
                cells = ", ".join(f"{n}: {dmin / res[n][0]:.2f}× ({diffs[n]:.0e})" for n in sizes)
                rule = fft_block_size(c, c, k, d, t)
                print(f"| {c} × {t} | {k} | {d} | {span} | {dmin * 1e3:.1f} / {dmed * 1e3:.1f} | {rule or '—'} | {cells} |", flush=True)
                rows.append({"c": c, "t": t, "k": k, "d": d, "direct_min_s": dmin, "rule": rule,
                             "fft": {n: {"min_s": res[n][0], "median_s": res[n][1], "max_abs_diff": diffs[n]} for n in sizes}})
    print(f"load at the end {os.getloadavg()[0]:.1f}")
    return rows


if __name__ == "__main__":
    main()
