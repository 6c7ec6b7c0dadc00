"""Throughput of the LM on this machine: training tokens/s of ``tiny`` and generation tokens/s
with and without the KV cache.

    python benchmarks/bench_lm.py                    # defaults: tiny, seq 256 x batch 16
    python benchmarks/bench_lm.py --device cuda --preset llama2-7b-base --seq_len 4096 --batch_size 1

Training: forward + backward + AdamW step on random tokens (fp32 on CPU, bf16 autocast on GPU),
after ``--warmup`` untimed steps. Generation: greedy decoding of ``--gen_tokens`` tokens after a
``--prompt_len`` prompt with :meth:`spiritlm.generation.SpiritLM.generate_ids`, EOS ignored.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch
import torch.nn.functional as F
from fairseq2.nn import BatchLayout

from spiritlm.generation import SpiritLM
from spiritlm.model import create_model, model_config, num_parameters
from spiritlm.data.synthetic import toy_tokenizer


def bench_train(model, vocab: int, seq_len: int, batch_size: int, steps: int, warmup: int, device: str) -> float:
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    use_bf16 = device.startswith("cuda")

    def step():
        ids = torch.randint(0, vocab, (batch_size, seq_len + 1), generator=g).to(device)
        with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=use_bf16):
            logits = model(ids[:, :-1], BatchLayout.of(ids[:, :-1]))
        loss = F.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    if use_bf16:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if use_bf16:
        torch.cuda.synchronize()
    return steps * batch_size * seq_len / (time.perf_counter() - t0)


def bench_generate(lm: SpiritLM, prompt_len: int, gen_tokens: int, use_cache: bool) -> float:
    prompt = [1] + list(range(10, 10 + prompt_len - 1))
    lm.generate_ids(prompt, max_new_tokens=4, do_sample=False, use_cache=use_cache, stop_at_eos=False)  # warm-up
    t0 = time.perf_counter()
    out = lm.generate_ids(prompt, max_new_tokens=gen_tokens, do_sample=False, use_cache=use_cache, stop_at_eos=False)
    return len(out) / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny", help="model preset (default: tiny)")
    p.add_argument("--vocab_size", type=int, default=1024, help="vocabulary of the tiny model (toy tokenizer: 1024)")
    p.add_argument("--seq_len", type=int, default=256, help="training sequence length (tokens)")
    p.add_argument("--batch_size", type=int, default=16, help="training sequences per step")
    p.add_argument("--steps", type=int, default=10, help="timed training steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed training steps")
    p.add_argument("--prompt_len", type=int, default=32, help="generation prompt length (tokens)")
    p.add_argument("--gen_tokens", type=int, default=256, help="generated tokens")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        tok = toy_tokenizer(tmp, num_hubert=501, pad_to_multiple=256)
    vocab = args.vocab_size if args.preset == "tiny" else model_config(args.preset).vocab_size
    vocab = max(vocab, tok.vocab_size)
    config = model_config(args.preset, vocab_size=vocab, max_seq_len=max(args.seq_len, args.prompt_len + args.gen_tokens))
    model = create_model(config, seed=0, device=args.device)
    n = num_parameters(model)
    print(f"model {args.preset}: {n / 1e6:.2f} M parameters, vocabulary {vocab}, device {args.device}, "
          f"threads {torch.get_num_threads()}")

    train_tps = bench_train(model, vocab, args.seq_len, args.batch_size, args.steps, args.warmup, args.device)
    print(f"training: {train_tps:,.0f} tokens/s (seq {args.seq_len} x batch {args.batch_size})")

    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    lm = SpiritLM(model.to(dtype), config, tok)
    with_cache = bench_generate(lm, args.prompt_len, args.gen_tokens, use_cache=True)
    without = bench_generate(lm, args.prompt_len, args.gen_tokens, use_cache=False)
    print(f"generation ({args.prompt_len}-token prompt, {args.gen_tokens} new tokens, greedy, batch 1):")
    print(f"  with KV cache:    {with_cache:,.1f} tokens/s")
    print(f"  without KV cache: {without:,.1f} tokens/s  ({with_cache / without:.1f}x slower)")
    result = {
        "preset": args.preset, "parameters": n, "vocab_size": vocab, "device": args.device,
        "threads": torch.get_num_threads(), "train_tokens_per_s": train_tps,
        "generate_tokens_per_s_kv_cache": with_cache, "generate_tokens_per_s_no_cache": without,
        "seq_len": args.seq_len, "batch_size": args.batch_size, "prompt_len": args.prompt_len, "gen_tokens": args.gen_tokens,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
