"""Peak memory of sharded (FSDP) training: init -> 2 steps -> save -> resume, per rank.

    python benchmarks/bench_memory.py                         # this checkout
    python benchmarks/bench_memory.py --code /tmp/old --label before   # another checkout (git worktree)

What it runs, each phase a ``torchrun`` launch of this script's worker (the recipe's own
``TrainRecipe`` with the data stream of ``tests/train_worker.py``, identical whatever the number
of processes):

1. ``init``: 2 CPU processes (gloo, ``--train.parallel fsdp``) start from a Hugging Face LLaMA
   directory of the chosen size (random weights, written first), with the rope-θ override and
   the vocabulary extension of the 7B recipes, take 2 steps and save a checkpoint;
2. ``resume``: 2 processes resume it, take 1 step and save;
3. ``resume_1proc``: 1 process resumes the same 2-process checkpoint, takes the same step
   (skipped with ``--code`` checkouts that cannot resume across world sizes).

Each worker writes its peak resident set size (``getrusage``'s ``ru_maxrss``), overall and as it
stood after setup (model built or loaded), after the training steps and after saving. Printed: peak RSS
per rank and phase against the size of the whole fp32 weights and of the AdamW state (+ the
gradients), and, for phase 3, the step-3 loss and weights against phase 2's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def worker(a: argparse.Namespace) -> None:
    sys.path.insert(0, str(REPO / "tests"))
    from train_worker import GlobalBatches

    import torch

    from spiritlm.train import load_train_config
    from spiritlm.train.recipe import TrainRecipe

    torch.set_num_threads(1)
    overrides = [
        f"model.init_from={a.init_from}", "model.overrides={rope_theta: 100000.0}", f"data.data_dir={a.data_dir}",
        f"data.seq_len={a.seq_len}", f"train.output_dir={a.out_run}", f"train.max_steps={a.max_steps}", "train.log_every=1",
        f"train.save_every={a.max_steps}", "train.parallel=fsdp", "train.progress=false", "train.tensorboard=false",
        "train.num_threads=1", "train.export_hf=false", "train.keep_checkpoints=0", "optim.lr=1e-4", "optim.warmup_steps=1",
    ]
    config = load_train_config(None, overrides)

    def peak() -> int:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # bytes (Linux reports kB)

    marks: dict[str, int] = {}

    class Measured(TrainRecipe):  # the peak so far after each part of the run
        def setup(self):
            super().setup()
            marks["setup"] = peak()

        def train_step(self, batches):
            out = super().train_step(batches)
            marks["steps"] = peak()
            return out

        def save_checkpoint(self):
            out = super().save_checkpoint()
            marks["save"] = peak()
            return out

    recipe = Measured(config, loaders=lambda cfg, tok, rank, world: (GlobalBatches(a.data_dir, rank, world, a.seq_len, 2), {}))
    summary = recipe.run()
    rank = int(os.environ.get("RANK", "0"))
    out = {"rank": rank, "peak_rss_bytes": peak(), "peak_after": marks, "losses": summary["train_loss"]}
    Path(a.report, f"rank{rank}.json").write_text(json.dumps(out))


def launch(nproc: int, code: Path, report: Path, **kw) -> list[dict]:
    report.mkdir(parents=True, exist_ok=True)
    args = [f"--{k}={v}" for k, v in kw.items()]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), __file__, "--worker",
           f"--report={report}", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{code}:{os.environ.get('PYTHONPATH', '')}"}
    t0 = time.perf_counter()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode:
        sys.exit(f"bench_memory: {nproc}-process run failed:\n{res.stderr[-3000:]}")
    print(f"  ({nproc} process(es), {time.perf_counter() - t0:.0f} s wall)", flush=True)
    return [json.loads((report / f"rank{r}.json").read_text()) for r in range(nproc)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--code", type=Path, default=REPO, help="checkout whose spiritlm is measured (default: this one)")
    p.add_argument("--label", default="this checkout")
    p.add_argument("--work", type=Path, default=Path("/tmp/bench_memory"))
    p.add_argument("--model_dim", type=int, default=1024)
    p.add_argument("--num_layers", type=int, default=20)
    p.add_argument("--ffn_inner_dim", type=int, default=2816)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--seq_len", type=int, default=64)
    p.add_argument("--skip_one_process", action="store_true", help="skip phase 3 (checkouts without resharding)")
    p.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    # worker mode (launched by torchrun)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for k in ("report", "init_from", "data_dir", "out_run"):
        p.add_argument(f"--{k}", help=argparse.SUPPRESS)
    p.add_argument("--max_steps", type=int, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        worker(a)
        return

    import torch

    from spiritlm.data.synthetic import toy_token_dirs
    from spiritlm.model import create_model, model_config, save_hf_model

    work = a.work / a.label.replace(" ", "_")
    shutil.rmtree(work, ignore_errors=True)
    tok, train_dir, _ = toy_token_dirs(work / "data", num_train=120, num_val=10)
    cfg = model_config("tiny", vocab_size=tok.num_text_pieces, model_dim=a.model_dim, num_layers=a.num_layers,
                       num_attn_heads=a.heads, num_key_value_heads=a.heads, ffn_inner_dim=a.ffn_inner_dim, max_seq_len=4096)
    model = create_model(cfg, seed=0)
    save_hf_model(model, cfg, work / "llama")  # stands in for LLaMA-2's Hugging Face folder
    params = sum(t.numel() for t in model.state_dict().values())
    params_ext = params + 2 * (tok.vocab_size - tok.num_text_pieces) * a.model_dim
    del model
    weights = 4 * params_ext
    print(f"bench_memory ({a.label}: {a.code}) on {platform.node()}, {os.cpu_count()} CPUs, torch {torch.__version__}")
    print(f"model: {params_ext / 1e6:.1f} M parameters after the vocabulary extension; fp32 weights {weights / 2**30:.2f} GiB, "
          f"AdamW state {2 * weights / 2**30:.2f} GiB, gradients {weights / 2**30:.2f} GiB "
          f"(whole: {4 * weights / 2**30:.2f} GiB; a half per rank when sharded on 2)")
    common = dict(init_from=work / "llama", data_dir=train_dir, seq_len=a.seq_len)
    results: dict = {"label": a.label, "code": str(a.code), "parameters": params_ext, "fp32_weights_bytes": weights,
                     "adamw_state_bytes": 2 * weights, "command": " ".join(sys.argv), "machine": platform.node()}
    print("phase 1: init from the HF folder, 2 steps, save (2 processes, FSDP)", flush=True)
    results["init"] = launch(2, a.code, work / "r1", out_run=work / "run", max_steps=2, **common)
    shutil.copytree(work / "run", work / "run1")
    print("phase 2: resume, 1 step, save (2 processes, FSDP)", flush=True)
    results["resume"] = launch(2, a.code, work / "r2", out_run=work / "run", max_steps=3, **common)
    if not a.skip_one_process:
        print("phase 3: resume the 2-process checkpoint with 1 process, 1 step, save", flush=True)
        results["resume_1proc"] = launch(1, a.code, work / "r3", out_run=work / "run1", max_steps=3, **common)
        from spiritlm.model import load_model

        two, _ = load_model(work / "run" / "checkpoints" / "step_3")
        one, _ = load_model(work / "run1" / "checkpoints" / "step_3")
        sd1 = one.state_dict()
        results["step3_weights_max_abs_diff"] = max(float((v - sd1[k]).abs().max()) for k, v in two.state_dict().items())
        results["step3_loss"] = {"2 processes": results["resume"][0]["losses"]["3"] if "3" in results["resume"][0]["losses"]
                                 else results["resume"][0]["losses"][3],
                                 "1 process": results["resume_1proc"][0]["losses"].get("3", results["resume_1proc"][0]["losses"].get(3))}
    print(f"\npeak RSS per rank (GiB) — fp32 weights {weights / 2**30:.2f}, weights + AdamW state {3 * weights / 2**30:.2f}:")
    for phase in ("init", "resume", "resume_1proc"):
        if phase in results:
            print(f"  {phase:<13}" + "  ".join(f"rank {r['rank']}: {r['peak_rss_bytes'] / 2**30:5.2f}" for r in results[phase])
                  + "   (peak after " + "; ".join(f"rank {r['rank']}: " + ", ".join(f"{k} {v / 2**30:.2f}" for k, v in r["peak_after"].items())
                                                  for r in results[phase]) + ")")
    if "step3_loss" in results:
        print(f"step-3 loss after resuming the 2-process checkpoint: 2 processes {results['step3_loss']['2 processes']:.6f}, "
              f"1 process {results['step3_loss']['1 process']:.6f}; step-3 weights max |diff| {results['step3_weights_max_abs_diff']:.2e}")
    if a.out:
        a.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
