"""What one push of the streaming generator costs on top of whole synthesis, and where it goes.

    python benchmarks/bench_stream_push.py                                # base, 4 s, pushes of 5..100 frames
    python benchmarks/bench_stream_push.py --sizes base,tiny --seconds 8 --rounds 9 --profile 5

For each size (a ``VocoderConfig`` preset with random weights at audible gains, weight norm folded
as ``Vocoder`` does; ``--vocoder DIR`` for a trained one) one utterance of ``--seconds`` of random
generator input (``frames = seconds · 25``) runs through ``UnitHifiGAN.vocode`` whole and through
:class:`~spiritlm.vocoder.streaming_generator.StreamingGenerator` in pushes of ``n`` frames for
each ``n`` of ``--push_frames``, alternating, ``--rounds`` rounds. It prints the median and min
seconds, the cost ÷ whole (by min: the least disturbed round on a shared machine), the max
|difference| from the whole audio, and the fixed cost of one push::

    per-push cost = (min stream time - min whole time) / number of pushes

Streams pay it for what whole synthesis does once: every layer's weights read again (``base``:
13.7 M parameters, 55 MB, plus the FFT convolutions' kernel spectra), ~90 convolution calls on
short inputs, and the bookkeeping of the per-layer queues. It does not depend on the push size,
so the overhead of a stream is ``1 + pushes · per-push / whole``. The harmonic source (``tiny``)
adds its excitation's convolutions to every push. Durations and the LM token parsing of
``Vocoder.stream`` are not in these numbers (``bench_vocoder.py --stream`` measures the whole
path). ``--profile N``: cProfile of one stream in pushes of N frames against whole synthesis, the
functions with the most own time. ``--stages N``: where a stream's extra cost lies, per generator
stage: the residual blocks' thread CPU time in whole synthesis and in a stream of N-frame pushes,
beside the stage's weight bytes (read again on every push) and its steps per push; then the
stage's convolutions once each on one push's input, on the paths a stream takes (FFT, Winograd or
direct), with their kernels in cache and evicted by a read or a written buffer, the bytes those
paths read for their kernels, and the sum over stages: what re-reading the kernels costs every
push, a floor under a stream's cost that no bookkeeping removes (vocoder/README.md, Streaming).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import pstats
import sys
import time

import numpy as np
import torch

from spiritlm.errors import UserError

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def build(size: str, vocoder_dir: str | None):
    """A folded ``Vocoder`` of preset ``size`` (random weights with audible gains) or from ``vocoder_dir``."""
    from bench_vocoder import _loud

    from spiritlm.vocoder import Vocoder, VocoderConfig
    from spiritlm.vocoder.model import UnitHifiGAN

    if vocoder_dir:
        return Vocoder.from_pretrained(vocoder_dir)
    torch.manual_seed(0)
    model = UnitHifiGAN(VocoderConfig.preset(size, num_speakers=4))
    _loud(model)
    return Vocoder(model)  # folds weight norm


def stream_fn(model, x: torch.Tensor, excitation: torch.Tensor | None, n: int, on_start=None):
    """A function that streams ``x`` ``[1, C, T]`` through a fresh StreamingGenerator in pushes of
    ``n`` frames (``on_start(generator)`` called on each new one before its first push)."""
    from spiritlm.vocoder.streaming_generator import StreamingGenerator

    T, hop = x.size(-1), model.hop

    def run() -> torch.Tensor:
        s = StreamingGenerator(model, model.source_convs, x.dtype, x.device)
        if on_start is not None:
            on_start(s)
        outs = []
        for i in range(0, T, n):
            e = None if excitation is None else excitation[..., i * hop:(i + n) * hop]
            outs.append(s.push(x[..., i:i + n], e, i + n >= T))
        return torch.cat(outs)

    return run


def stage_costs(model, whole, x: torch.Tensor, excitation: torch.Tensor | None, n: int, rounds: int) -> list[dict]:
    """Per generator stage (upsampling ``i`` and its residual blocks): this thread's CPU seconds in
    the residual blocks during whole synthesis and during a stream of ``n``-frame pushes (min over
    ``rounds`` alternating rounds; a block's time includes its convolutions and adds), and the
    bytes of the stage's weights, which a stream reads once per push and whole synthesis once."""
    from spiritlm.vocoder.streaming_generator import StreamingGenerator

    stages, k = model.num_upsamples, model.num_kernels
    spent = {"whole": [0.0] * stages, "stream": [0.0] * stages}
    start: dict[int, float] = {}

    def pre(mod, args):
        start[id(mod)] = time.thread_time()

    def hooked(i):
        def post(mod, args, out):
            spent["whole"][i] += time.thread_time() - start[id(mod)]
        return post

    def timed(push, i):
        def run(*a, **kw):
            t = time.thread_time()
            out = push(*a, **kw)
            spent["stream"][i] += time.thread_time() - t
            return out
        return run

    def wrap(s: StreamingGenerator) -> None:
        for i, blocks in enumerate(s.blocks):
            for b in blocks:
                b.push = timed(b.push, i)

    handles = []
    for j, block in enumerate(model.resblocks):
        handles += [block.register_forward_pre_hook(pre), block.register_forward_hook(hooked(j // k))]
    stream = stream_fn(model, x, excitation, n, on_start=wrap)
    best = {"whole": [float("inf")] * stages, "stream": [float("inf")] * stages}
    try:
        with torch.inference_mode():
            for _ in range(rounds):
                for path, fn in (("whole", whole), ("stream", stream)):
                    spent[path] = [0.0] * stages
                    fn()
                    best[path] = [min(a, b) for a, b in zip(best[path], spent[path])]
    finally:
        for h in handles:
            h.remove()
    rows, rate = [], 1
    for i in range(stages):
        rate *= model.upsample_rates[i]
        mods = [model.ups[i], *model.resblocks[i * k:(i + 1) * k]]
        weight_mb = sum(p.numel() * p.element_size() for m in mods for p in m.parameters()) / 2**20
        rows.append({"stage": i, "channels": model.ups[i].conv.out_channels, "steps_per_push": n * rate, "weights_mb": weight_mb,
                     "whole_ms": best["whole"][i] * 1e3, "stream_ms": best["stream"][i] * 1e3})
    return rows


def _path_bytes(m, length: int) -> int:
    """Bytes of what the convolution ``m`` reads for its kernel on a ``length``-step input: the
    transformed kernel (Winograd), the kernel spectrum (FFT) or the weight (direct)."""
    c = m.conv
    path = m.fast_path(length)
    if path is None:
        return c.weight.numel() * c.weight.element_size()
    if path[0] == "winograd":
        return m._transformed(path[1]).numel() * 4
    return m._spectrum(path[1]).numel() * 8


def cold_weight_cost(model, n: int, rounds: int) -> list[dict]:
    """Per stage: its residual blocks' convolutions run once each on a push's input (``n`` frames'
    steps at that stage, plus each kernel's reach) on the path a stream takes at that length
    (FFT, Winograd or direct, as ``StreamingGenerator``), with their kernels in cache (the same
    call again) and out of it, as a push finds them after the other layers: evicted by reading a
    64 MB buffer (clean lines), and by writing it (dirty lines, written back as the kernels come
    in; a push's other layers both read weights and write activations); the input read back in
    cache before each call. Thread CPU ms, min over ``rounds``; ``kernel_mb``: the bytes of what
    those paths read for their kernels (weights, Winograd transforms, FFT spectra), once per push."""
    from spiritlm.vocoder.generator import WNConv1d

    evict = torch.empty(16 << 20)
    k = model.num_kernels
    rows, rate = [], 1
    with torch.inference_mode():
        for i in range(model.num_upsamples):
            rate *= model.upsample_rates[i]
            steps = n * rate
            calls, nbytes, fast = [], 0, 0
            for block in model.resblocks[i * k:(i + 1) * k]:
                for m in block.modules():
                    if isinstance(m, WNConv1d):
                        c = m.conv
                        x = torch.randn(1, c.in_channels, 1, steps + c.dilation[0] * (c.kernel_size[0] - 1))
                        x = x.contiguous(memory_format=torch.channels_last)
                        if m.fast_path(x.size(-1)) is not None:
                            calls.append((lambda x, m=m: m(x), x))  # the module pads: its edge outputs are cut, as a push does
                            fast += 1
                        else:
                            calls.append((lambda x, run=m.bind_cl(x): run(x, 0), x))
                        nbytes += _path_bytes(m, x.size(-1))
            best = {"hot": float("inf"), "cold": float("inf"), "cold_written": float("inf")}
            for _ in range(rounds):
                for state in best:
                    total = 0.0
                    for run, x in calls:
                        if state == "cold":
                            evict.sum()
                            x.mul_(1.0)  # the input back in cache, as a push's fresh activations are
                        elif state == "cold_written":
                            evict.add_(1.0)
                            x.mul_(1.0)
                        else:
                            run(x)
                        t = time.thread_time()
                        run(x)
                        total += time.thread_time() - t
                    best[state] = min(best[state], total)
            rows.append({"stage": i, "steps_per_push": steps, "convs": len(calls), "fast_convs": fast, "kernel_mb": nbytes / 2**20,
                         "hot_ms": best["hot"] * 1e3, "cold_ms": best["cold"] * 1e3, "cold_written_ms": best["cold_written"] * 1e3})
    return rows


def print_stages(rows: list[dict], cold: list[dict], n: int, pushes: int) -> None:
    print(f"\n  residual blocks per stage, thread CPU ms (min of the rounds), pushes of {n} frames ({pushes} pushes):")
    print(f"  {'stage':>5s} {'channels':>8s} {'steps/push':>10s} {'weights MB':>10s} {'whole':>8s} {'stream':>8s} {'extra':>8s} {'extra/push':>10s}")
    for r in rows:
        extra = r["stream_ms"] - r["whole_ms"]
        print(f"  {r['stage']:5d} {r['channels']:8d} {r['steps_per_push']:10d} {r['weights_mb']:10.1f} {r['whole_ms']:8.1f} "
              f"{r['stream_ms']:8.1f} {extra:+8.1f} {extra / pushes:+10.2f}")
    print("\n  the same stages' convolutions once each on one push's input, on the stream's paths, kernels in cache vs")
    print("  evicted by a read and by a written 64 MB buffer (thread CPU ms); what every push pays again:")
    print(f"  {'stage':>5s} {'steps/push':>10s} {'convs':>5s} {'fast':>4s} {'kernels MB':>10s} {'in cache':>9s} {'evicted':>8s} "
          f"{'written':>8s} {'extra/push':>12s}")
    for r in cold:
        print(f"  {r['stage']:5d} {r['steps_per_push']:10d} {r['convs']:5d} {r['fast_convs']:4d} {r['kernel_mb']:10.1f} {r['hot_ms']:9.2f} "
              f"{r['cold_ms']:8.2f} {r['cold_written_ms']:8.2f} {r['cold_ms'] - r['hot_ms']:+5.2f}..{r['cold_written_ms'] - r['hot_ms']:+5.2f}")
    by_read = sum(r["cold_ms"] - r["hot_ms"] for r in cold)
    by_write = sum(r["cold_written_ms"] - r["hot_ms"] for r in cold)
    mb = sum(r["kernel_mb"] for r in cold)
    gb_s = [mb / 2**10 / max(ms, 1e-9) * 1e3 for ms in (by_read, by_write)]
    print(f"  kernels read again every push: {mb:.0f} MB, {by_read:.1f} ms per push evicted by a read, {by_write:.1f} by a write "
          f"({gb_s[0]:.1f} / {gb_s[1]:.1f} GB/s)")


def measure(voc, seconds: float, push_frames: list[int], rounds: int, profile: int | None, stages: int | None = None) -> list[dict]:
    from bench_vocoder import _alternate

    model = voc.model
    torch.manual_seed(1)
    T = max(2, round(seconds * model.config.sample_rate / model.hop))
    x = torch.randn(1, model.conv_pre.conv.in_channels, T) * 0.5
    excitation = None
    with torch.inference_mode():
        if model.source is not None:  # the source's own F0 prediction, as vocode does; both paths get its excitation
            from spiritlm.vocoder.generator import HifiGANGenerator
            from spiritlm.vocoder.model import _fit_length

            f0 = model.source.f0_from_prediction(*model.predict_f0(x))
            excitation = model.source.excitation(f0.float())
            convs = model.source_convs
            whole = lambda: HifiGANGenerator.forward(model, x, None, lambda i, n: _fit_length(convs[i](excitation), n))[0, 0]  # noqa: E731
        else:
            whole = lambda: model.vocode(x)[0, 0]  # noqa: E731
        fns = {"whole": whole}
        for n in push_frames:
            fns[f"push {n}"] = stream_fn(model, x, excitation, n)
        load0 = os.getloadavg()[0]
        res = _alternate(fns, rounds)
        load = f"{load0:.1f} -> {os.getloadavg()[0]:.1f}"
    w_med, w_min, w_out = res["whole"]
    audio_s = w_out.numel() / model.config.sample_rate
    print(f"\n  one utterance of {audio_s:.1f} s ({T} frames), {rounds} alternating rounds, "
          f"{torch.get_num_threads()} thread(s), load (1 min) {load}")
    print(f"  {'path':10s} {'median s':>9s} {'min s':>8s} {'cost vs whole (min)':>20s} {'ms per push':>12s}  max |diff|")
    rows = []
    for k, (med, mn, out) in res.items():
        pushes = 0 if k == "whole" else -(-T // int(k.split()[1]))
        per_push = (mn - w_min) / pushes * 1e3 if pushes else 0.0
        diff = float((out - w_out).abs().max())
        print(f"  {k:10s} {med:9.3f} {mn:8.3f} {mn / w_min:20.2f} {per_push:12.1f}  {diff:.1e}")
        rows.append({"path": k, "pushes": pushes, "median_s": med, "min_s": mn, "audio_s": audio_s, "cost_vs_whole_min": mn / w_min,
                     "per_push_ms": per_push, "max_abs_diff": diff, "load": load})
    if stages:
        srows = stage_costs(model, whole, x, excitation, stages, rounds)
        cold = cold_weight_cost(model, stages, rounds)
        print_stages(srows, cold, stages, -(-T // stages))
        rows += [{"path": f"push {stages}", "stage_row": True, **r,
                  **{f"conv_{k}": v for k, v in c.items() if k.endswith(("_ms", "_mb", "convs"))}} for r, c in zip(srows, cold)]
    if profile:
        with torch.inference_mode():
            for name, fn in (("whole", whole), (f"push {profile}", stream_fn(model, x, excitation, profile))):
                pr = cProfile.Profile()
                pr.enable()
                fn()
                pr.disable()
                st = pstats.Stats(pr)
                print(f"\n  cProfile, {name}: {st.total_tt * 1e3:.0f} ms in all (profiled); most own time:")
                top = sorted(((v[2], v[0], k) for k, v in st.stats.items()), reverse=True)[:12]  # type: ignore[attr-defined]
                for tt, calls, (path, line, fn_name) in top:
                    print(f"    {tt * 1e3:7.1f} ms {calls:6d} calls  {fn_name} ({os.path.basename(path)}:{line})")
    return rows


def _frame_list(text: str) -> list[int]:
    """``--push_frames``: positive integers, comma-separated."""
    try:
        frames = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated frame counts, got {text!r}") from None
    if not frames or min(frames) < 1:
        raise argparse.ArgumentTypeError(f"frame counts must be >= 1, got {text!r}")
    return frames


def _push_size(text: str) -> int:
    """``--stages``: one positive frame count."""
    frames = _frame_list(text)
    if len(frames) != 1:
        raise argparse.ArgumentTypeError(f"expected one frame count, got {text!r}")
    return frames[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="base", help="comma-separated VocoderConfig presets (tiny, base, expressive)")
    p.add_argument("--vocoder", default=None, help="a trained vocoder directory instead of random weights (one size)")
    p.add_argument("--seconds", type=float, default=4.0, help="utterance length (s)")
    p.add_argument("--push_frames", default="5,10,25,50,100", type=_frame_list, help="comma-separated push sizes (frames of 640 samples)")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--profile", type=int, default=None, help="cProfile one stream in pushes of this many frames")
    p.add_argument("--stages", type=_push_size, default=None,
                   help="also time each stage's residual blocks, whole vs a stream in pushes of this many frames")
    p.add_argument("--json", default=None, help="also write the rows here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"python {platform.python_version()}")
    print("command: python " + " ".join(sys.argv))
    rows = []
    for size in args.sizes.split(","):
        try:
            voc = build(size.strip(), args.vocoder)
        except (ValueError, OSError, UserError) as e:  # an unknown preset, a missing or unreadable --vocoder
            p.error(f"--sizes/--vocoder: {e}")
        print(f"\n== {size.strip() if not args.vocoder else args.vocoder}")
        for r in measure(voc, args.seconds, args.push_frames, args.rounds, args.profile, args.stages):
            rows.append({"size": size.strip(), **r})
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"argv": sys.argv, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
