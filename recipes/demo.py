"""The embedded pipeline on the synthetic corpus: what ``make demo`` runs.

Every stage is the ``spiritlm`` command a user would type (printed before it runs), so this file
doubles as a walkthrough::

    corpus synth      -> OUT/corpus/{manifest.jsonl, wavs/}
    corpus check      -> validates the manifest
    corpus text       -> OUT/text.txt, text-only documents (the stand-in for LLaMA-2's text)
    tokenizer train   -> OUT/tokenizer (tiny preset: MFCC units + pitch VQ-VAE + style), metrics.json
    tokenize          -> OUT/units.jsonl (Meta's units format)
    data build        -> OUT/data/{train,valid} (speech / text / interleaved token shards)
    train (text)      -> OUT/lm/tiny-text          the stand-in for LLaMA-2
    train (mixture)   -> OUT/lm/tiny-interleaved   continued pretraining, as Spirit LM
    generate          -> a text and a speech continuation

Stages whose outputs already exist are skipped, so an interrupted demo resumes; ``--fresh``
starts over. ``--quick`` shrinks every stage (used by the slow end-to-end test).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from spiritlm.cli import main as spiritlm

CONFIGS = Path(__file__).resolve().parent / "configs"


def _run(argv: list[str]) -> None:
    print(f"\n$ spiritlm {' '.join(argv)}", flush=True)
    try:
        spiritlm(argv)
    except SystemExit as exc:  # jsonargparse / commands exit; only a failure stops the demo
        if exc.code not in (None, 0):
            raise


def run_demo(out: Path, num_utts: int, text_docs: int, seed: int, text_steps: int, mixture_steps: int) -> dict:
    """Runs the whole pipeline into ``out``; returns a summary (also written to OUT/demo_summary.json)."""
    t0 = time.time()
    corpus, tok_dir, units = out / "corpus", out / "tokenizer", out / "units.jsonl"
    manifest = corpus / "manifest.jsonl"
    extra_text = out / "text.txt"
    data_train, data_valid = out / "data" / "train", out / "data" / "valid"
    lm_text, lm_mix = out / "lm" / "tiny-text", out / "lm" / "tiny-interleaved"
    timings: dict[str, float] = {}

    def stage(name: str, done: bool, argv_list: list[list[str]]) -> None:
        if done:
            print(f"\n[demo] {name}: already done, skipping")
            return
        t = time.time()
        for argv in argv_list:
            _run(argv)
        timings[name] = round(time.time() - t, 1)

    stage("corpus", manifest.exists(), [
        ["corpus", "synth", "--out", str(corpus), "--num_utts", str(num_utts), "--seed", str(seed)],
    ])
    _run(["corpus", "check", str(manifest)])
    stage("text corpus", extra_text.exists(), [
        ["corpus", "text", "--out", str(extra_text), "--num_sentences", str(text_docs), "--seed", str(seed)],
    ])
    stage("speech tokenizer", (tok_dir / "metrics.json").exists(), [
        ["tokenizer", "train", "--manifest", str(manifest), "--out", str(tok_dir), "--preset", "tiny", "--seed", str(seed)],
    ])
    stage("tokenize", units.exists() and not (out / "units.jsonl.errors.json").exists() and _lines(units) == _lines(manifest), [
        ["tokenize", "--manifest", str(manifest), "--tokenizer", str(tok_dir), "--out", str(units)],
    ])
    common = ["--units", str(units), "--expressive", "true", "--group_words", "40", "--seed", str(seed)]
    stage("data", (data_valid / "summary.json").exists(), [
        ["data", "build", "--manifest", str(manifest), "--out", str(data_train), "--split", "train",
         "--extra_text", str(extra_text), *common],
        ["data", "build", "--manifest", str(manifest), "--out", str(data_valid), "--split", "valid",
         "--text_tokenizer", str(data_train / "tokenizer.model"), *common],
    ])
    data_opts = ["--data.data_dir", str(data_train), "--data.val_dir", str(data_valid)]
    stage("lm text-only", (lm_text / "metrics.json").exists(), [
        ["train", "--config", str(CONFIGS / "tiny-text.yaml"), *data_opts,
         "--train.output_dir", str(lm_text), "--train.max_steps", str(text_steps)],
    ])
    stage("lm interleaved", (lm_mix / "metrics.json").exists(), [
        ["train", "--config", str(CONFIGS / "tiny-interleaved.yaml"), *data_opts, "--model.init_from", str(lm_text),
         "--train.output_dir", str(lm_mix), "--train.max_steps", str(mixture_steps)],
    ])
    first_test = next(json.loads(line) for line in manifest.read_text().splitlines() if json.loads(line)["split"] == "test")
    prompt = " ".join(first_test["text"].split()[:4])
    _run(["generate", "--model", str(lm_mix), "--text", prompt, "--output_modality", "text",
          "--max_new_tokens", "20", "--do_sample", "false"])
    _run(["generate", "--model", str(lm_mix), "--text", prompt, "--output_modality", "speech",
          "--max_new_tokens", "40", "--min_new_tokens", "10", "--do_sample", "false"])

    summary = {
        "out": str(out),
        "seconds": round(time.time() - t0, 1),
        "stage_seconds": timings,
        "corpus": json.loads((corpus / "stats.json").read_text()),
        "tokenizer_metrics": json.loads((tok_dir / "metrics.json").read_text()),
        "data": {s: json.loads((d / "summary.json").read_text()) for s, d in (("train", data_train), ("valid", data_valid))},
        "lm": {name: json.loads((d / "metrics.json").read_text()) for name, d in (("text", lm_text), ("interleaved", lm_mix))},
    }
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def _lines(path: Path) -> int:
    return sum(1 for line in path.read_text().splitlines() if line.strip())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m spiritlm.recipes.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    parser.add_argument("--num_utts", type=int, default=1500, help="utterances in the synthetic corpus")
    parser.add_argument("--text_docs", type=int, default=20000, help="documents in the text-only corpus")
    parser.add_argument("--seed", type=int, default=0, help="seed of every stage")
    parser.add_argument("--text_steps", type=int, default=300, help="steps of text-only pretraining")
    parser.add_argument("--mixture_steps", type=int, default=300, help="steps of continued pretraining")
    parser.add_argument("--quick", action="store_true", help="tiny sizes everywhere (a smoke run)")
    parser.add_argument("--fresh", action="store_true", help="delete OUT first")
    args = parser.parse_args(argv)
    if args.quick:
        args.num_utts, args.text_docs, args.text_steps, args.mixture_steps = 120, 2000, 20, 20
    out = Path(args.out)
    if args.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = run_demo(out, args.num_utts, args.text_docs, args.seed, args.text_steps, args.mixture_steps)
    print("\n[demo] done in", summary["seconds"], "s; summary in", out / "demo_summary.json")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
