"""LM decoding against transformers, side by side: identical random weights, alternating rounds.

    python benchmarks/bench_decode.py                       # 61 M params, 1 thread, 7 rounds
    python benchmarks/bench_decode.py --rounds 9 --new_tokens 128 --threads 1
    python benchmarks/bench_decode.py --device cuda --dtype bfloat16

A random fairseq2 LLaMA (``--model_dim`` … ``--vocab_size``, seeded) is exported with the project's
Hugging Face interop (``spiritlm.model.save_hf_model``) and loaded by ``transformers``, so both
decoders run the same weights. Two workloads, greedy, EOS ignored, ``--new_tokens`` each:

* one prompt (``--prompt_len`` tokens): ``SpiritLM.generate_ids`` vs
  ``LlamaForCausalLM.generate``;
* ``--prompts`` prompts of ``--min_len``..``--max_len`` tokens (seeded): ``SpiritLM.generate_batch_ids``
  (one batch) vs ``generate`` on the same prompts left padded with an attention mask.

Each round times ours and the reference back to back (order alternating between rounds) after
one untimed warm-up; the table shows median and min seconds, the ratio (reference ÷ ours, > 1:
ours is faster) of medians and of mins, and how many outputs are identical.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time

import torch
from bench_eval_engine import machine, sync  # benchmarks/ is on sys.path when run as a script

from spiritlm.generation import SpiritLM


def timed(fn, device: str) -> tuple[float, object]:
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def main(argv=None) -> dict:
    """Prints the table; returns the results (``{"workloads": {...}, ...}``)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_dim", type=int, default=512)
    p.add_argument("--num_layers", type=int, default=8)
    p.add_argument("--num_attn_heads", type=int, default=8)
    p.add_argument("--num_key_value_heads", type=int, default=8)
    p.add_argument("--ffn_inner_dim", type=int, default=1536)
    p.add_argument("--vocab_size", type=int, default=32768, help="Meta's expressive vocabulary size")
    p.add_argument("--prompt_len", type=int, default=32, help="tokens of the one-prompt workload")
    p.add_argument("--prompts", type=int, default=16, help="prompts of the batched workload")
    p.add_argument("--min_len", type=int, default=8)
    p.add_argument("--max_len", type=int, default=68)
    p.add_argument("--new_tokens", type=int, default=128)
    p.add_argument("--rounds", type=int, default=7, help="timed rounds (>= 7 for the issue's protocol)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--only", default="one,batch", help="comma-separated workloads: one, batch")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print("machine:", machine())
    print("command:", " ".join([os.path.basename(sys.executable), *(sys.argv if argv is None else ["benchmarks/bench_decode.py", *argv])]))

    from transformers import LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    from spiritlm.data.synthetic import toy_tokenizer
    from spiritlm.model import create_model, model_config, num_parameters, save_hf_model

    hf_logging.set_verbosity_error()
    dtype = getattr(torch, args.dtype)
    with tempfile.TemporaryDirectory() as tmp:
        tok = toy_tokenizer(tmp, num_hubert=501, pad_to_multiple=256)
        vocab = max(args.vocab_size, tok.vocab_size)
        config = model_config("tiny", model_dim=args.model_dim, num_layers=args.num_layers,
                              num_attn_heads=args.num_attn_heads, num_key_value_heads=args.num_key_value_heads,
                              ffn_inner_dim=args.ffn_inner_dim, vocab_size=vocab,
                              max_seq_len=max(args.prompt_len, args.max_len) + args.new_tokens + 8)
        model = create_model(config, seed=0)
        with torch.no_grad():  # sharper logits: random models are near-uniform, ties would blur "identical"
            model.final_proj.weight.mul_(20.0)
        hf_path = save_hf_model(model, config, os.path.join(tmp, "hf"))
        hf = LlamaForCausalLM.from_pretrained(hf_path, torch_dtype=dtype).to(args.device).eval()
    lm = SpiritLM(model.to(device=args.device, dtype=dtype), config, tok)
    print(f"model: {num_parameters(model) / 1e6:.1f} M parameters (dim {args.model_dim}, {args.num_layers} layers, "
          f"{args.num_attn_heads}/{args.num_key_value_heads} heads, vocab {vocab}), {args.device} {args.dtype}; "
          f"greedy, {args.new_tokens} new tokens, EOS ignored, {args.rounds} rounds")

    rng = random.Random(0)
    text_ids = [i for i in range(3, tok.vocab_size) if tok.text_token_mask()[i]]
    one_prompt = [tok.bos_id] + [rng.choice(text_ids) for _ in range(args.prompt_len - 1)]
    prompts = [[tok.bos_id] + [rng.choice(text_ids) for _ in range(rng.randint(args.min_len, args.max_len) - 1)]
               for _ in range(args.prompts)]
    N = args.new_tokens
    gen_kw = dict(max_new_tokens=N, min_new_tokens=N, do_sample=False, eos_token_id=None, pad_token_id=0)
    gen_kw_cfg = dict(top_p=None, top_k=None, temperature=None)

    def ours_one():
        return [lm.generate_ids(one_prompt, max_new_tokens=N, do_sample=False, stop_at_eos=False)]

    def hf_one():
        with torch.inference_mode():
            out = hf.generate(torch.tensor([one_prompt], device=args.device), **gen_kw, **gen_kw_cfg)
        return [out[0, len(one_prompt):].tolist()]

    W = max(len(q) for q in prompts)
    padded = torch.tensor([[0] * (W - len(q)) + q for q in prompts], device=args.device)
    att = torch.tensor([[0] * (W - len(q)) + [1] * len(q) for q in prompts], device=args.device)

    def ours_batch():
        return lm.generate_batch_ids(prompts, max_new_tokens=N, do_sample=False, stop_at_eos=False,
                                     batch_size=len(prompts))

    def hf_batch():
        with torch.inference_mode():
            out = hf.generate(padded, attention_mask=att, **gen_kw, **gen_kw_cfg)
        return [r[W:].tolist() for r in out]

    workloads = {"one": ("1 prompt", ours_one, hf_one, "LlamaForCausalLM.generate", "generate_ids"),
                 "batch": (f"{args.prompts} prompts", ours_batch, hf_batch, "generate, left padded", "generate_batch_ids")}
    results = {"machine": machine(), "command": sys.argv, "workloads": {}}
    rows = []
    for key in [w for w in args.only.split(",") if w]:
        label, ours, ref, ref_name, our_name = workloads[key]
        ours(), ref()  # warm-up
        t_ours, t_ref = [], []
        same = None
        for r in range(args.rounds):
            pair = [("ours", ours), ("ref", ref)] if r % 2 == 0 else [("ref", ref), ("ours", ours)]
            outs = {}
            for name, fn in pair:
                t, outs[name] = timed(fn, args.device)
                (t_ours if name == "ours" else t_ref).append(t)
            same = sum(a == b for a, b in zip(outs["ours"], outs["ref"]))
            n_out = len(outs["ours"])
        med_o, med_r, min_o, min_r = (statistics.median(t_ours), statistics.median(t_ref), min(t_ours), min(t_ref))
        rows.append((label, ref_name, our_name, med_r, min_r, med_o, min_o, med_r / med_o, min_r / min_o, f"{same}/{n_out}"))
        results["workloads"][key] = {"ours_s": t_ours, "reference_s": t_ref, "ratio_median": med_r / med_o,
                                     "ratio_min": min_r / min_o, "identical": same, "n": n_out}
    print()
    print("| workload | reference | ours | ref median / min (s) | ours median / min (s) | ratio median (min) | identical |")
    print("|---|---|---|---|---|---|---|")
    for label, ref_name, our_name, med_r, min_r, med_o, min_o, ratio, ratio_min, same in rows:
        print(f"| {label} | {ref_name} | `{our_name}` | {med_r:.3f} / {min_r:.3f} | {med_o:.3f} / {min_o:.3f} | "
              f"{ratio:.2f}x ({ratio_min:.2f}x) | {same} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
