"""Vocoder synthesis speed: seconds of audio per second of wall time, by size, threads, one at a time vs batched.

    python benchmarks/bench_vocoder.py                          # tiny and base, 1 and 2 threads
    python benchmarks/bench_vocoder.py --sizes tiny --threads 1 --num_utts 8 --seconds 4
    python benchmarks/bench_vocoder.py --device cuda --sizes base,expressive --threads 0

For each size (``tiny``, ``base``, ``expressive`` presets of :class:`spiritlm.vocoder.VocoderConfig`;
randomly initialised unless ``--vocoder size=DIR`` names a trained one: speed does not depend on
the weights) a :class:`spiritlm.vocoder.Vocoder`
is built with weight norm folded into the convolutions (as ``from_pretrained`` does), and
``--num_utts`` random frame-rate unit dicts of ``--seconds`` (± 25 %) are synthesised through
``Vocoder.synthesize_batch`` — one at a time (batch 1) and in padded batches of
``--batch_size`` — after one untimed warm-up call; the best of ``--repeat`` runs is kept.

Faster paths are measured on the batched run and reported only where the audio stays within
``--tolerance`` (max absolute sample difference, default 1e-3) of float32: bfloat16 autocast
(always tried) and ``torch.compile`` of the generator (``--compile``, slow to compile on a CPU).
The check needs audio at a realistic level: a randomly initialised generator is near-silent, so
there a path is reported "unverified" unless a trained vocoder is given.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time

import numpy as np
import torch


def make_inputs(cfg, num_utts: int, seconds: float, seed: int = 0) -> list[dict[str, str]]:
    """Random unit dicts (frame-rate streams) of ``seconds`` ± 25 % each."""
    rng = np.random.default_rng(seed)
    items = []
    for _ in range(num_utts):
        T = max(2, int(seconds * rng.uniform(0.75, 1.25) * cfg.sample_rate / cfg.unit_hop))
        d = {"hubert": " ".join(map(str, rng.integers(0, cfg.num_units, T)))}
        if cfg.num_pitch:
            d["pitch"] = " ".join(map(str, rng.integers(0, cfg.num_pitch, -(-T // cfg.pitch_ratio))))
        if cfg.num_style:
            d["style"] = " ".join(map(str, rng.integers(0, cfg.num_style, -(-T // cfg.style_ratio))))
        items.append(d)
    return items


def timed(fn, repeat: int) -> tuple[float, list[np.ndarray]]:
    fn()  # warm-up (allocations, compilation)
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best, out  # type: ignore[return-value]


def bench_size(size: str, threads: list[int], args) -> list[dict]:
    from spiritlm.vocoder import Vocoder, VocoderConfig
    from spiritlm.vocoder.model import UnitHifiGAN, num_parameters

    trained = dict(kv.split("=", 1) for kv in args.vocoder.split(",")) if args.vocoder else {}
    if size in trained:
        voc = Vocoder.from_pretrained(trained[size], device=args.device)  # folds weight norm
        cfg = voc.config
    else:
        cfg = VocoderConfig.preset(size, num_speakers=4)
        torch.manual_seed(0)
        voc = Vocoder(UnitHifiGAN(cfg), speakers=None).to(args.device)  # folds weight norm
    assert not voc.model.has_weight_norm
    items = make_inputs(cfg, args.num_utts, args.seconds)
    audio_s = sum(len(d["hubert"].split()) for d in items) * cfg.unit_hop / cfg.sample_rate
    print(f"\n{size}: {num_parameters(voc.model) / 1e6:.2f} M parameters ({'trained: ' + trained[size] if size in trained else 'random'}), "
          f"{len(items)} utterances, {audio_s:.1f} s of audio, device {args.device}")
    rows = []
    for n in threads:
        if n:
            torch.set_num_threads(n)
        label = f"{torch.get_num_threads()} thread{'s' if torch.get_num_threads() > 1 else ''}"
        t1, _ = timed(lambda: voc.synthesize_batch(items, batch_size=1), args.repeat)
        tb, ref = timed(lambda: voc.synthesize_batch(items, batch_size=args.batch_size), args.repeat)
        row = {"size": size, "threads": torch.get_num_threads(), "audio_s": audio_s,
               "one_at_a_time_x_realtime": audio_s / t1, f"batched_{args.batch_size}_x_realtime": audio_s / tb}
        print(f"  {label}: one at a time {audio_s / t1:7.2f} s/s   batched ({args.batch_size}) {audio_s / tb:7.2f} s/s")
        for name, make in fast_paths(voc, args):
            try:
                with make() as runner:
                    tf, wavs = timed(lambda: runner(items), args.repeat)
                diff = max(float(np.max(np.abs(a - b))) for a, b in zip(wavs, ref))
            except Exception as exc:  # noqa: BLE001 - a path that does not run here is reported, not fatal
                print(f"    {name}: not available ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})")
                row[f"{name}_status"] = "unavailable"
                continue
            peak = max(float(np.max(np.abs(r))) for r in ref)
            if peak < 0.1:  # randomly initialised generators are near-silent: an absolute bound says nothing
                print(f"    {name}: {audio_s / tf:7.2f} s/s batched, max |diff| {diff:.1e}, but unverified: float32 peak is "
                      f"{peak:.1e} (random weights); pass --vocoder {size}=DIR")
                row[f"{name}_status"] = f"unverified (float32 peak {peak:.1e})"
            elif diff <= args.tolerance:
                print(f"    {name}: {audio_s / tf:7.2f} s/s batched (max |diff| {diff:.1e} <= {args.tolerance:g})")
                row[f"{name}_x_realtime"] = audio_s / tf
            else:
                print(f"    {name}: rejected, max |diff| {diff:.1e} > {args.tolerance:g} of float32 (would be {audio_s / tf:.2f} s/s)")
                row[f"{name}_status"] = f"rejected (max diff {diff:.1e})"
        rows.append(row)
    return rows


def fast_paths(voc, args):
    """``(name, context manager yielding a batched runner)`` for each faster path to try."""

    @contextlib.contextmanager
    def bf16():
        dev = voc.device.type

        def run(items):
            with torch.autocast(device_type=dev, dtype=torch.bfloat16):
                return voc.synthesize_batch(items, batch_size=args.batch_size)

        yield run

    @contextlib.contextmanager
    def compiled():
        model = voc.model
        original = model.vocode
        model.vocode = torch.compile(original, dynamic=True)
        try:
            yield lambda items: voc.synthesize_batch(items, batch_size=args.batch_size)
        finally:
            model.vocode = original

    paths = [("bf16_autocast", bf16)]
    if args.compile:
        paths.append(("torch_compile", compiled))
    return paths


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="tiny,base", help="comma-separated presets (tiny, base, expressive)")
    p.add_argument("--threads", default="1,2", help="comma-separated torch thread counts (0: torch's default)")
    p.add_argument("--num_utts", type=int, default=4, help="utterances per run")
    p.add_argument("--seconds", type=float, default=3.0, help="mean utterance length (s)")
    p.add_argument("--batch_size", type=int, default=4, help="utterances per batch in the batched run")
    p.add_argument("--repeat", type=int, default=2, help="timed runs (the best is kept)")
    p.add_argument("--tolerance", type=float, default=1e-3, help="max |sample difference| of a faster path vs float32")
    p.add_argument("--compile", action="store_true", help="also try torch.compile of the generator")
    p.add_argument("--vocoder", default="", help="trained vocoders to use instead of random weights: SIZE=DIR[,SIZE=DIR]")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = p.parse_args()

    print(f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"python {platform.python_version()}")
    print("command: python " + " ".join(sys.argv))
    rows = []
    for size in args.sizes.split(","):
        rows += bench_size(size.strip(), [int(t) for t in args.threads.split(",")], args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"argv": sys.argv, "results": rows}, f, indent=1)


if __name__ == "__main__":
    main()
