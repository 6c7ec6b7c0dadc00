"""Issue 20's table in one run: units, vocoder and decoding against their references, side by side.

    OMP_NUM_THREADS=1 python benchmarks/bench_vs_reference.py --manifest corpus50/manifest.jsonl \\
        --km_manifest corpus_km/manifest.jsonl --centers centers500.npy --json after.json
    # the same table for another checkout's spiritlm (e.g. main before a change), then this one's:
    python benchmarks/bench_vs_reference.py ... --before ../speed_before --before_parts decode,vocoder

Each part is one of the existing side-by-side benchmarks, imported and run with issue 20's
settings (every comparison in one process, alternating rounds, median and min, 1 torch thread):

* ``units`` — ``bench_units_vs_reference.main``: ``UnitTokenizer`` fp32 and bf16 against
  transformers' ``HubertModel`` loaded from the same converted checkpoint (HuBERT-base-25Hz shape,
  random weights, layer 11 + k-means 500) on the real LibriSpeech file, units equal on it and
  on ``--manifest``'s first 50 utterances;
* ``vocoder`` — ``bench_vocoder.compare``: ``UnitHifiGAN.vocode`` / ``Vocoder.synthesize`` against
  speechbrain's stock ``HifiganGenerator`` with the same weights (Meta's ``base`` layout, one
  utterance), then padded batches against one at a time per second of audio;
* ``decode`` — ``bench_decode.main``: ``generate_ids`` / ``generate_batch_ids`` against
  ``LlamaForCausalLM.generate`` on identical random weights (61 M parameters), 1 prompt × 128
  new tokens and 16 left-padded prompts, greedy outputs compared.

Ratio = reference time ÷ ours (> 1: ours faster). ``--tree DIR`` measures the ``spiritlm`` of the
checkout ``DIR`` (this script and the other benchmarks stay this checkout's: same harness);
``--before DIR`` first runs ``--before_parts`` that way in a subprocess, then this checkout, and
prints both tables and a before/after one. Each side's ratios are measured within its own process,
so load that changes between the two runs moves their seconds, not (much) their ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PARTS = ("units", "vocoder", "decode")


def use_tree(root: str) -> None:
    """Makes ``import spiritlm`` load the checkout at ``root`` instead of this one (before any
    spiritlm import): rewrites the editable install's path mapping."""
    root = os.path.abspath(root)
    if any(m == "spiritlm" or m.startswith("spiritlm.") for m in sys.modules):
        raise SystemExit("bench_vs_reference.py: --tree must be applied before spiritlm is imported")
    mods = [sys.modules.get(getattr(f, "__module__", "")) for f in sys.meta_path]
    mapped = [m for m in mods if m is not None and isinstance(getattr(m, "MAPPING", None), dict) and "spiritlm" in m.MAPPING]
    if not mapped:
        raise SystemExit("bench_vs_reference.py: --tree needs spiritlm installed editable (pip install -e .)")
    for m in mapped:
        here = os.path.dirname(m.MAPPING["spiritlm"])
        m.MAPPING = {k: os.path.join(root, os.path.relpath(v, here)) for k, v in m.MAPPING.items()}
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != ROOT]
    import spiritlm

    if not os.path.abspath(spiritlm.__file__).startswith(root + os.sep):
        raise SystemExit(f"bench_vs_reference.py: --tree {root}: spiritlm still loads from {spiritlm.__file__}")


def git_rev(root: str) -> str:
    try:
        out = subprocess.run(["git", "-C", root, "log", "-1", "--format=%h %s"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return out.stdout.strip()[:70] + (" (+ uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "?"


def load_avg() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def run_parts(args) -> dict:
    """Runs the parts; returns the summary rows and each part's raw results."""
    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, HERE)
    rows: list[dict] = []
    raw: dict = {}
    parts = [p for p in args.only.split(",") if p]

    def row(part, path, reference, ours, med, mn, outputs, load):
        rows.append({"part": part, "path": path, "reference": reference, "ours": ours, "ratio_median": med,
                     "ratio_min": mn, "outputs": outputs, "load": load})

    if "units" in parts:
        import bench_units_vs_reference as bu

        argv = ["--manifest", args.manifest, "--rounds", str(args.rounds), "--threads", str(args.threads),
                "--num_utts", str(args.num_utts)]
        argv += ["--km_manifest", args.km_manifest] if args.km_manifest else []
        argv += ["--centers", args.centers] if args.centers else []
        res = bu.main(argv)
        raw["units"] = res
        load = load_avg()
        by = {r["path"]: r for r in res["rows"]}
        f32 = by.get("UnitTokenizer fp32")
        for name, r in by.items():
            if not name.startswith("UnitTokenizer"):
                continue
            eq = r["units_equal_pct"]
            outputs = f"units = reference {eq['ref_real']:.2f}% real / {eq['ref_utts']:.2f}% {res['num_utts']} utts"
            if name != "UnitTokenizer fp32" and f32 is not None:
                outputs = f"units = our fp32 {eq['fp32_real']:.2f}% real / {eq['fp32_utts']:.2f}% {res['num_utts']} utts"
            elif res["feature_max_abs_diff"] is not None:
                outputs += f", features within {res['feature_max_abs_diff']:.1e}"
            row("units", f"HuBERT-25Hz L11 + k-means, {res['audio_s']:.1f} s real file", "transformers HubertModel fp32",
                f"`{name}`", r["ratio_median"], r["ratio_min"], outputs, load)

    if "vocoder" in parts:
        import bench_vocoder as bv

        vargs = bv.parser().parse_args(["--compare", "--sizes", "base", "--seconds", str(args.seconds),
                                        "--num_utts", str(args.voc_utts), "--batch_size", str(args.voc_batch),
                                        "--rounds", str(args.rounds), "--threads", str(args.threads)])
        res = bv.compare(vargs)
        raw["vocoder"] = res
        load = load_avg()
        by = {r["path"]: r for r in res}
        ours = by["ours vocode"]
        for ref in ("sb stock (reflection)", "sb zero-pad (before)"):
            r = by[ref]
            row("vocoder", f"one {args.seconds:.0f} s utterance", f"speechbrain HifiganGenerator, {ref[3:]}", "`UnitHifiGAN.vocode`",
                r["ratio_median"], r["ratio_min"], f"max abs diff {r['max_abs_diff']:.1e} (middle {r['max_abs_diff_middle']:.1e})", load)
        syn = by["ours synthesize"]
        r = by["sb stock (reflection)"]
        row("vocoder", f"one {args.seconds:.0f} s utterance", "speechbrain HifiganGenerator, stock (reflection)",
            "`Vocoder.synthesize` (end to end)", r["median_s"] / syn["median_s"], r["min_s"] / syn["min_s"],
            f"max abs diff {syn['max_abs_diff']:.1e} vs vocode", load)
        one = by["one at a time"]
        for k, r in by.items():
            if k.startswith(("padded batch", "default")):
                row("vocoder", f"{args.voc_utts} utterances, {r['audio_s']:.1f} s, per second of audio", "ours, one at a time",
                    f"`synthesize_batch`, {k}", one["median_s"] / r["median_s"], one["min_s"] / r["min_s"],
                    f"max abs diff {r['max_abs_diff']:.1e}", load)

    if "decode" in parts:
        import bench_decode as bd

        res = bd.main(["--rounds", str(args.rounds), "--threads", str(args.threads)])
        raw["decode"] = res
        load = load_avg()
        for key, label, ref, ours in (("one", "LM greedy, 1 prompt x 128 new tokens, 61 M", "transformers `generate`", "`generate_ids`"),
                                      ("batch", "LM greedy, 16 prompts (8-68 tokens) x 128", "transformers `generate`, left padded",
                                       "`generate_batch_ids`")):
            w = res["workloads"].get(key)
            if w is not None:
                row("decode", label, ref, ours, w["ratio_median"], w["ratio_min"], f"greedy identical {w['identical']}/{w['n']}", load)
    return {"rows": rows, "raw": raw}


def print_table(title: str, res: dict) -> None:
    print(f"\n## {title}\n")
    print("| path | reference | ours | ratio median (min) | outputs | load after |")
    print("|---|---|---|---|---|---|")
    for r in res["rows"]:
        print(f"| {r['path']} | {r['reference']} | {r['ours']} | {r['ratio_median']:.2f}x ({r['ratio_min']:.2f}x) | "
              f"{r['outputs']} | {r['load']} |")


def print_before_after(before: dict, after: dict) -> None:
    print("\n## before / after (ratio = reference / ours, median (min))\n")
    print("| path | reference | ours | before | after | outputs before / after |")
    print("|---|---|---|---|---|---|")
    key = lambda r: (r["part"], r["path"], r["reference"], r["ours"])  # noqa: E731
    old = {key(r): r for r in before["rows"]}
    for r in after["rows"]:
        b = old.get(key(r))
        was = f"{b['ratio_median']:.2f}x ({b['ratio_min']:.2f}x)" if b else "not rerun (code unchanged)"
        print(f"| {r['path']} | {r['reference']} | {r['ours']} | {was} | {r['ratio_median']:.2f}x ({r['ratio_min']:.2f}x) | "
              f"{b['outputs'] + ' / ' if b else ''}{r['outputs']} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=",".join(PARTS), help="comma-separated parts: units, vocoder, decode")
    p.add_argument("--rounds", type=int, default=7, help="alternating rounds of every comparison (issue 20: >= 7)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--manifest", help="units: utterances for the unit equality (e.g. `spiritlm corpus synth --num_utts 50 --seed 0`)")
    p.add_argument("--num_utts", type=int, default=50, help="units: utterances of --manifest compared")
    p.add_argument("--km_manifest", help="units: utterances the k-means is fitted on (default: --manifest)")
    p.add_argument("--centers", help="units: .npy of the k-means centres (loaded if present, else fitted and saved)")
    p.add_argument("--seconds", type=float, default=4.0, help="vocoder: utterance length (s)")
    p.add_argument("--voc_utts", type=int, default=4, help="vocoder: utterances of the batched comparison")
    p.add_argument("--voc_batch", type=int, default=4, help="vocoder: padded batch size")
    p.add_argument("--tree", help="measure the spiritlm of this checkout (default: this one)")
    p.add_argument("--before", help="a checkout to measure first (--before_parts), in a subprocess, for a before/after table")
    p.add_argument("--before_parts", default=",".join(PARTS), help="parts run on --before (others: code unchanged)")
    p.add_argument("--json", help="write the rows and raw results here")
    args = p.parse_args()
    if "units" in args.only.split(",") and not args.manifest:
        p.error("the units part needs --manifest (or leave it out: --only vocoder,decode)")
    if args.tree:
        use_tree(args.tree)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    tree = os.path.abspath(args.tree or ROOT)
    import torch

    sys.path.insert(0, HERE)
    from bench_eval_engine import machine

    torch.set_num_threads(args.threads)
    header = {"command": " ".join([os.path.basename(sys.executable), *sys.argv]), "machine": machine(),
              "load_start": load_avg(), "tree": f"{tree}: {git_rev(tree)}"}
    before = None
    if args.before:
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "before.json")
            cmd = [sys.executable, os.path.abspath(__file__), "--tree", args.before, "--only", args.before_parts,
                   "--json", out, "--rounds", str(args.rounds), "--threads", str(args.threads), "--num_utts", str(args.num_utts),
                   "--seconds", str(args.seconds), "--voc_utts", str(args.voc_utts), "--voc_batch", str(args.voc_batch)]
            for flag in ("manifest", "km_manifest", "centers"):
                if getattr(args, flag):
                    cmd += [f"--{flag}", getattr(args, flag)]
            subprocess.run(cmd, check=True)
            with open(out) as f:
                before = json.load(f)["result"]
    for k, v in header.items():
        print(f"{k}: {v}")
    res = run_parts(args)
    res.update(header, load_end=load_avg())
    if before is not None:
        print_table(f"before: {before['tree']} (load {before['load_start']} -> {before['load_end']})", before)
    print_table(f"{'after' if before else 'this checkout'}: {res['tree']} (load {res['load_start']} -> {res['load_end']})", res)
    if before is not None:
        print_before_after(before, res)
    print(f"\ncommand: {header['command']}\nmachine: {header['machine']}; load average {res['load_start']} at the start, "
          f"{res['load_end']} at the end")
    if args.json:
        from spiritlm.atomic import atomic_file

        with atomic_file(args.json) as f:
            json.dump({"result": res, "before": before}, f, indent=1)


if __name__ == "__main__":
    main()
