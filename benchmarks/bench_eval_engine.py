"""Throughput of the evaluation engine: batched vs one-at-a-time greedy generation and scoring.

    python benchmarks/bench_eval_engine.py                                   # random `tiny` model
    python benchmarks/bench_eval_engine.py --model demo_out/lm/tiny-interleaved --prompts 64
    python benchmarks/bench_eval_engine.py --device cuda --preset llama2-7b-base --prompts 64 --batch_sizes 1,16,64

Generation: ``--prompts`` prompts of mixed lengths (``--min_len``..``--max_len`` tokens, seeded),
``--gen_tokens`` greedy tokens each with EOS ignored, first one at a time with
``SpiritLM.generate_ids`` (KV cache), then with ``SpiritLM.generate_batch_ids`` (left padding,
KV cache) at each ``--batch_sizes``; the outputs are checked to be identical. Scoring: the same
prompts, each with a ``--gen_tokens`` continuation, scored with ``score_continuations`` at batch
size 1 and at each batch size. Label scoring: every prompt with ``--labels`` short candidates
(as few-shot intent classification), one pair at a time vs one call that runs each shared prompt
once. Prints the machine, the command and tokens/s (new tokens for
generation, prompt + continuation tokens for scoring).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time

import torch

from spiritlm.generation import SpiritLM


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.node()} | {cpu} | {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()} | {gpu} | torch {torch.__version__}"


def build_lm(args) -> SpiritLM:
    if args.model:
        return SpiritLM.from_pretrained(args.model, device=args.device,
                                        dtype=torch.bfloat16 if args.device.startswith("cuda") else torch.float32)
    from spiritlm.model import create_model, model_config
    from spiritlm.data.synthetic import toy_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tok = toy_tokenizer(tmp, num_hubert=501, pad_to_multiple=256)
    vocab = tok.vocab_size if args.preset == "tiny" else max(model_config(args.preset).vocab_size, tok.vocab_size)
    config = model_config(args.preset, vocab_size=vocab, max_seq_len=max(512, args.max_len + args.gen_tokens))
    model = create_model(config, seed=0, device=args.device)
    if args.device.startswith("cuda"):
        model = model.to(torch.bfloat16)
    return SpiritLM(model, config, tok)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model folder (default: a random --preset model)")
    p.add_argument("--preset", default="tiny", help="preset of the random model (default: tiny)")
    p.add_argument("--prompts", type=int, default=32, help="number of prompts")
    p.add_argument("--min_len", type=int, default=20, help="shortest prompt (tokens)")
    p.add_argument("--max_len", type=int, default=200, help="longest prompt (tokens)")
    p.add_argument("--gen_tokens", type=int, default=32, help="greedy tokens per prompt (EOS ignored)")
    p.add_argument("--batch_sizes", default="4,16,32", help="comma-separated batch sizes")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--labels", type=int, default=11, help="candidates per prompt in the label-scoring test")
    p.add_argument("--seed", type=int, default=0, help="seeds the prompts")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print("machine:", machine())
    print("command:", " ".join([os.path.basename(sys.executable), *sys.argv]))
    lm = build_lm(args)
    tok = lm.tokenizer
    rng = random.Random(args.seed)
    text_ids = [i for i in range(tok.vocab_size) if tok.text_token_mask()[i]]
    speech_ids = tok.speech_token_ids("hubert")
    prompts = []
    for _ in range(args.prompts):
        n = rng.randint(args.min_len, args.max_len)
        pool = speech_ids if rng.random() < 0.5 else text_ids
        prompts.append([tok.bos_id] + [rng.choice(pool) for _ in range(n - 1)])
    n_params = sum(p.numel() for p in lm.model.parameters())
    print(f"model: {args.model or args.preset} ({n_params / 1e6:.2f} M parameters, max_seq_len {lm.config.max_seq_len}), "
          f"device {args.device}; {args.prompts} prompts of {args.min_len}-{args.max_len} tokens, {args.gen_tokens} new tokens each")

    lm.generate_ids(prompts[0], max_new_tokens=2, do_sample=False)  # warm-up
    sync(args.device)
    t0 = time.perf_counter()
    ref = [lm.generate_ids(q, max_new_tokens=args.gen_tokens, do_sample=False, stop_at_eos=False) for q in prompts]
    sync(args.device)
    t_one = time.perf_counter() - t0
    new = sum(len(r) for r in ref)
    results = {"machine": machine(), "command": sys.argv, "generation": {"one_at_a_time": new / t_one}, "scoring": {}}
    print(f"generation one at a time: {new / t_one:,.1f} new tokens/s ({t_one:.2f} s)")
    for bs in [int(b) for b in args.batch_sizes.split(",") if b]:
        sync(args.device)
        t0 = time.perf_counter()
        out = lm.generate_batch_ids(prompts, max_new_tokens=args.gen_tokens, batch_size=bs, stop_at_eos=False)
        sync(args.device)
        t = time.perf_counter() - t0
        same = sum(a == b for a, b in zip(out, ref))
        print(f"generation batch {bs:>3}: {new / t:,.1f} new tokens/s ({t:.2f} s, {t_one / t:.1f}x), "
              f"identical to one at a time: {same}/{len(ref)}")
        results["generation"][f"batch_{bs}"] = {"tokens_per_s": new / t, "identical": same}

    conts = ref
    total = sum(len(q) + len(c) for q, c in zip(prompts, conts))
    t0 = time.perf_counter()
    one = lm.score_continuations(prompts, conts, batch_size=1)
    sync(args.device)
    t_one = time.perf_counter() - t0
    print(f"scoring batch   1: {total / t_one:,.1f} tokens/s ({t_one:.2f} s)")
    results["scoring"]["batch_1"] = total / t_one
    for bs in [int(b) for b in args.batch_sizes.split(",") if b]:
        t0 = time.perf_counter()
        many = lm.score_continuations(prompts, conts, batch_size=bs)
        sync(args.device)
        t = time.perf_counter() - t0
        diff = max(abs(a.sum_logprob - b.sum_logprob) for a, b in zip(one, many))
        print(f"scoring batch {bs:>3}: {total / t:,.1f} tokens/s ({t:.2f} s, {t_one / t:.1f}x), "
              f"max |sum log-prob difference| vs batch 1: {diff:.2e}")
        results["scoring"][f"batch_{bs}"] = {"tokens_per_s": total / t, "max_abs_diff": diff}
    # few-shot label scoring: every prompt with the same K short candidates (as ic does)
    cands = [[rng.choice(text_ids) for _ in range(rng.randint(2, 5))] for _ in range(args.labels)]
    flat_p = [q for q in prompts for _ in cands]
    flat_c = [c for _ in prompts for c in cands]
    t0 = time.perf_counter()
    one = [lm.score_continuations([q], [c])[0] for q, c in zip(flat_p, flat_c)]
    sync(args.device)
    t_one = time.perf_counter() - t0
    t0 = time.perf_counter()
    many = lm.score_continuations(flat_p, flat_c, batch_size=max(int(b) for b in args.batch_sizes.split(",") if b))
    sync(args.device)
    t = time.perf_counter() - t0
    diff = max(abs(a.sum_logprob - b.sum_logprob) for a, b in zip(one, many))
    print(f"label scoring ({args.prompts} prompts x {args.labels} candidates): one pair at a time {t_one:.2f} s, "
          f"shared prompts {t:.2f} s ({t_one / t:.1f}x), max |difference| {diff:.2e}")
    results["label_scoring"] = {"one_pair_at_a_time_s": t_one, "shared_prompt_s": t, "max_abs_diff": diff}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
