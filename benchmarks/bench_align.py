"""Alignment accuracy and speed of ``spiritlm corpus align`` against exact word times.

The synthetic corpus has exact word times (espeak's own), so: synthesise it, train the project's
CTC judge on its train split (``spiritlm eval judges --which [asr]``), strip the words of its
test split, align them with ``spiritlm corpus align --aligner JUDGE`` at one thread, and compare
every word boundary (starts and ends) with the truth: median absolute error (ms) and the share
within 20 ms and 50 ms, beside two baselines that know only the transcript and the duration
(uniform: every word the same length over the whole audio; by characters: lengths proportional
to the word's letters). Speed: seconds of audio aligned per second of wall time (x real time),
model load excluded.

    python benchmarks/bench_align.py                 # ~5 min on an idle 2-core machine (most of it the judge's training)
    python benchmarks/bench_align.py --work DIR      # reuses DIR's corpus and judge when present

Prints one JSON object (also written to WORK/bench_align.json) with the machine and the command.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def boundaries(utts) -> dict[str, list[float]]:
    return {u.id: [t for w in u.words for t in (w.start, w.end)] for u in utts}


def errors_ms(truth: dict[str, list[float]], hyp: dict[str, list[float]]) -> np.ndarray:
    out = []
    for uid, t in truth.items():
        if uid in hyp and len(hyp[uid]) == len(t):
            out += [abs(a - b) * 1000 for a, b in zip(t, hyp[uid])]
    return np.asarray(out)


def summary(err: np.ndarray) -> dict:
    return {"boundaries": int(err.size), "median_ms": round(float(np.median(err)), 1), "mean_ms": round(float(err.mean()), 1),
            "within_20ms": round(float((err <= 20).mean()), 3), "within_50ms": round(float((err <= 50).mean()), 3)}


def baseline(u, by_chars: bool) -> list[float]:
    weights = [max(1, len(w.word)) if by_chars else 1 for w in u.words]
    edges = np.concatenate([[0.0], np.cumsum(weights)]) / sum(weights) * u.duration
    return [t for a, b in zip(edges, edges[1:]) for t in (a, b)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/spiritlm_bench_align")
    ap.add_argument("--num_utts", type=int, default=400)
    ap.add_argument("--asr_steps", type=int, default=600)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    exe = [str(Path(sys.executable).with_name("spiritlm"))]
    t0 = time.perf_counter()
    corpus = work / "corpus" / "manifest.jsonl"
    if not corpus.exists():
        subprocess.run(exe + ["corpus", "synth", "--out", str(work / "corpus"), "--num_utts", str(args.num_utts),
                              "--seed", "0", "--workers", "2", "--progress", "false"], check=True)
    t_synth = time.perf_counter() - t0
    judge = work / "judges" / "asr"
    if not (judge / "judge.json").exists():
        subprocess.run(exe + ["eval", "judges", "--manifest", str(corpus), "--out", str(work / "judges"), "--which", "[asr]",
                              "--asr_steps", str(args.asr_steps), "--threads", str(args.threads), "--progress", "false"], check=True)
    t_judge = time.perf_counter() - t0 - t_synth

    from spiritlm.corpus.manifest import Utterance, read_manifest, write_manifest

    test = [u for u in read_manifest(corpus) if u.split == "test"]
    stripped = work / "test_nowords.jsonl"
    write_manifest(stripped, [Utterance(**{**u.__dict__, "words": [], "phones": None}) for u in test])
    out = work / "test_aligned.jsonl"
    import torch

    from spiritlm.corpus.align import align_manifest, load_aligner

    torch.set_num_threads(args.threads)
    for p in (out, work / "test_aligned.rejects.jsonl"):
        if p.exists():
            p.unlink()
    model = load_aligner(str(judge))
    report = align_manifest(str(stripped), model, str(out), batch_size=8, progress=False)
    aligned = read_manifest(out)
    truth = boundaries(test)
    result = {
        "aligner": f"spiritlm CTC judge ({args.asr_steps} steps on the train split)",
        "judge_test_cer": json.loads((work / "judges" / "judges_metrics.json").read_text()).get("asr", {}).get("cer"),
        "test_utterances": len(test),
        "aligned": len(aligned),
        "rejected_or_skipped": report.rejected + report.skipped,
        "ctc_align": summary(errors_ms(truth, boundaries(aligned))),
        "uniform_baseline": summary(errors_ms(truth, {u.id: baseline(u, False) for u in test})),
        "by_characters_baseline": summary(errors_ms(truth, {u.id: baseline(u, True) for u in test})),
        "audio_seconds": round(report.audio_seconds, 1),
        "align_wall_seconds": round(report.wall_seconds, 2),
        "x_real_time": round(report.audio_seconds / report.wall_seconds, 1),
        "threads": args.threads,
        "setup_seconds": {"synth": round(t_synth, 1), "judge_training": round(t_judge, 1)},
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, {platform.processor() or ''}, python {platform.python_version()}, "
                   f"load {os.getloadavg()[0]:.1f}",
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }
    (work / "bench_align.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
