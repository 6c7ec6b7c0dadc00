"""Peak memory of tokenizer training against corpus size: each size trains in a fresh process.

For each ``--sizes`` N, the first N training utterances of ``--manifest`` plus its whole test
split (the same evaluation set for every N) train the ``tiny`` preset with short pitch and style
stages (``--pitch_steps``, ``--style_steps``: memory, not quality, is measured), and the process
reports its peak resident memory (``ru_maxrss``), the wall time and the headline metrics.
Streaming training should keep the peak nearly flat as N grows. ``--full_preset true`` runs the
preset as ``spiritlm tokenizer train --preset tiny`` does (steps scaled to the corpus), to compare
quality.

Usage::

    python benchmarks/bench_tokenizer_train.py --manifest demo_out/corpus/manifest.jsonl --sizes 200,800
        [--train_module spiritlm.tokenizers.train] [--threads 1] [--full_preset true]

``--train_module`` names a module with ``make_preset`` and ``train_tokenizer`` (to time another
version of the trainer the same way).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

CHILD = r"""
import importlib, json, os, resource, sys, time
from dataclasses import replace
import torch
torch.set_num_threads({threads})
mod = importlib.import_module({module!r})
p = mod.make_preset("tiny")
if not {full}:
    p = replace(p, scale_steps=False, vqvae_train=replace(p.vqvae_train, steps={pitch_steps}, checkpoint_every=0),
                style_train=replace(p.style_train, steps={style_steps}))
t = time.time()
m = mod.train_tokenizer({manifest!r}, {out!r}, p, seed=0, threads={threads})
keys = ["pnmi", "phone_purity", "f0_rmse_cents", "vuv_error", "codebook_perplexity", "style_purity"]
print(json.dumps({{"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "wall_s": time.time() - t,
                  **{{k: round(m[k], 4) for k in keys if k in m}}}}))
"""


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--sizes", default="200,800", help="training utterances per run (comma-separated)")
    ap.add_argument("--train_module", default="spiritlm.tokenizers.train")
    ap.add_argument("--pitch_steps", type=int, default=50)
    ap.add_argument("--style_steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--full_preset", type=lambda v: v.lower() in ("true", "1", "yes"), default=False,
                    help="true: the tiny preset as the CLI runs it (ignores --pitch_steps/--style_steps)")
    args = ap.parse_args(argv)
    lines = [json.loads(ln) for ln in open(args.manifest) if ln.strip()]
    base = os.path.dirname(os.path.abspath(args.manifest))
    for x in lines:  # absolute audio paths: the subset manifest lives elsewhere
        if not os.path.isabs(x["audio"]):
            x["audio"] = os.path.join(base, x["audio"])
    train = [x for x in lines if x.get("split") not in ("test", "valid")]
    test = [x for x in lines if x.get("split") == "test"]
    print(f"command: {' '.join([os.path.basename(sys.executable)] + sys.argv)}")
    steps = "steps scaled to the corpus" if args.full_preset else f"{args.pitch_steps} pitch / {args.style_steps} style steps"
    print(f"{args.train_module}: tiny preset, {steps}; {len(test)} test utterances; "
          f"load average {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as tmp:
        for n in [int(s) for s in args.sizes.split(",")]:
            sub = train[:n] + test
            seconds = sum(float(x.get("duration") or 0) for x in train[:n])
            man = os.path.join(tmp, f"m{n}.jsonl")
            with open(man, "w") as f:
                f.write("".join(json.dumps(x) + "\n" for x in sub))
            code = CHILD.format(threads=args.threads, module=args.train_module, pitch_steps=args.pitch_steps, full=args.full_preset,
                                style_steps=args.style_steps, manifest=man, out=os.path.join(tmp, f"tok{n}"))
            res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
            if res.returncode:
                sys.exit(f"size {n}: training failed:\n{res.stderr[-3000:]}")
            r = json.loads(res.stdout.strip().splitlines()[-1])
            print(f"{n:>6} train utterances ({seconds / 3600:.2f} h): peak RSS {r.pop('peak_rss_mb'):.0f} MB, "
                  f"{r.pop('wall_s'):.0f} s, {json.dumps(r)}; load average {os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    main()
