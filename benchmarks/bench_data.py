"""Benchmark of the data pipeline: build speed and loader speed, in tokens per second.

    python benchmarks/bench_data.py [--num_utts 3000] [--workers 2] [--seq_len 2048] [--batch_size 8]

Builds a token directory from a random manifest (random words and word times, 8–60 words an
utterance) and random units of the right lengths (:mod:`spiritlm.data.synthetic`) with the
default interleaving config, with 1 and with ``--workers`` processes, then times the training
loader (:class:`spiritlm.data.PackedLoader`), a resume from a late position, and the validation
loader. Prints the machine and the command first.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cpus, {platform.system()} {platform.release()}, python {platform.python_version()}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num_utts", type=int, default=3000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seq_len", type=int, default=2048)
    ap.add_argument("--batch_size", type=int, default=8)
    ap.add_argument("--batches", type=int, default=300)
    ap.add_argument("--expressive", action="store_true")
    ap.add_argument("--group_words", type=int, default=0, help="InterleaveConfig.group_words")
    ap.add_argument("--keep", default=None, help="build into this directory and keep it")
    args = ap.parse_args()

    import torch

    from spiritlm.corpus.manifest import read_manifest
    from spiritlm.data import LoaderConfig, PackedLoader, ValidationLoader
    from spiritlm.data.build import build_dataset
    from spiritlm.data.synthetic import random_manifest, random_units
    from spiritlm.interleave import InterleaveConfig

    torch.set_num_threads(1)
    print(f"machine: {machine()}")
    print(f"command: {' '.join([Path(sys.executable).name] + sys.argv)}")
    tmp = Path(args.keep or tempfile.mkdtemp(prefix="bench_data_"))
    try:
        manifest = random_manifest(tmp / "manifest.jsonl", args.num_utts, seed=0)
        utts = read_manifest(manifest)
        units = random_units(utts, tmp / "units.jsonl", seed=0)
        hours = sum(u.duration for u in utts) / 3600
        print(f"inputs: {len(utts)} utterances, {hours:.2f} h of (pretend) speech")
        cfg = InterleaveConfig(expressive=args.expressive, group_words=args.group_words)
        tok_path = None
        for workers in sorted({1, args.workers}):
            out = tmp / f"tokens_w{workers}"
            t = time.perf_counter()
            s = build_dataset(manifest, units, out, interleave=cfg, workers=workers, seed=0, text_tokenizer=tok_path)
            dt = time.perf_counter() - t
            tok_path = tok_path or str(out / "tokenizer.model")
            docs = sum(v["documents"] for v in s["subsets"].values())
            print(
                f"build  workers={workers}: {s['tokens']:,} tokens, {docs:,} documents in {dt:.2f} s "
                f"(reading inputs + tokenizer {s['prepare_seconds']:.2f} s, documents + tokens + shards "
                f"{s['tokenize_seconds']:.2f} s = {s['tokens'] / s['tokenize_seconds']:,.0f} tokens/s) -> {s['tokens'] / dt:,.0f} tokens/s, "
                f"{hours * 3600 / dt:,.0f}x real time; skipped {s['skipped']}"
            )
        ratio = {k: (round(v["speech_text_ratio"], 2) if v["speech_text_ratio"] else None) for k, v in s["subsets"].items()}
        print(f"       speech/text token ratio per subset: {ratio}")

        lcfg = LoaderConfig(str(out), seq_len=args.seq_len, batch_size=args.batch_size, seed=0)
        loader = PackedLoader(lcfg)
        next(loader)  # warm-up (memmaps, permutations)
        t = time.perf_counter()
        for _ in range(args.batches):
            next(loader)
        dt = time.perf_counter() - t
        n = args.batches * args.batch_size * args.seq_len
        print(
            f"loader train B={args.batch_size} L={args.seq_len}: {args.batches} batches in {dt:.2f} s -> "
            f"{n / dt:,.0f} tokens/s ({dt / args.batches * 1e3:.2f} ms/batch); epochs seen {loader.epochs()}"
        )
        state = loader.state_dict()
        t = time.perf_counter()
        resumed = PackedLoader(lcfg)
        resumed.load_state_dict(state)
        next(resumed)
        print(f"loader resume after {state['batches']} batches: {(time.perf_counter() - t) * 1e3:.1f} ms to the first batch")
        for subset in ("speech", "text", "interleaved"):
            val = ValidationLoader(lcfg, subset)
            t = time.perf_counter()
            k = sum(1 for _ in val)
            dt = time.perf_counter() - t
            print(f"loader valid {subset:>11}: {k} batches, {val.num_tokens:,} tokens in {dt:.2f} s -> {val.num_tokens / dt:,.0f} tokens/s")
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
