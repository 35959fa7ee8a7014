#!/usr/bin/env python3
"""The anchor of bench/forward: prefill and decode tokens/s of transformers'
DeepseekV4ForCausalLM on the CPU, measured exactly as bench-forward measures ours.

  forward_hf.py --model DIR [--threads N] [--prompt-len P] [--decode N] [--batch B]
                [--reps R] [--seed S] [--experts-impl eager|grouped_mm|batched_mm] [--json]
  forward_hf.py --model DIR --emit-tokens N [--seed S]
  forward_hf.py --model DIR --check OURS.bin --check-len N [--threads N] [--seed S]

The model is loaded from the same safetensors in fp32 (from_pretrained(dtype=float32)),
eager attention (the only one V4 supports), put in eval mode; everything runs under
torch.no_grad() with torch.set_num_threads(N). Tokens come from the same splitmix64 streams as
bench-forward (sequence b: seed + b, token (x >> 11) % vocab_size).

  prefill  one warm-up, then R prefills of sequence 0's prompt, each with a fresh DynamicCache,
           use_cache=True, logits_to_keep=1 (ours computes the last token's logits too);
  decode   on the last prefill's cache: 4 warm-up steps, then R rounds of N one-token steps,
           each feeding past_key_values; tok/s = N / round time;
  batched  with --batch B > 1: the B prompts prefilled as one [B, P] batch (untimed), then R
           rounds of N steps of [B, 1]; aggregate tok/s = B * N / round time.

--emit-tokens prints sequence 0's first N tokens, comma-separated (for dp-logits).
--check runs the full forward (no cache) of sequence 0's first N tokens and compares its logits
with OURS.bin (float32 [N][vocab], what dp-logits writes); it prints one JSON object with the
max abs difference, the max |logit|, their ratio (max rel diff) and the argmax agreement. It
also checks transformers' own cached path (prefill N-8, then 8 one-token steps) against its
full forward, so a difference can be told apart from a cache bug in the reference.
"""

import argparse
import json
import os
import statistics
import sys
import time

from bench_util import M64, splitmix64_stream  # bench/bench_util.py, beside this script

WARMUP_STEPS = 4


def fnv1a(h, toks):
    for v in toks:
        v &= 0xFFFFFFFF
        for k in range(4):
            h ^= (v >> (8 * k)) & 0xFF
            h = (h * 0x100000001B3) & M64
    return h


def vocab_of(model_dir):
    with open(os.path.join(model_dir, "config.json")) as f:
        return int(json.load(f).get("vocab_size", 129280))


def load(args, torch):
    from transformers import DeepseekV4ForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    kw = {"dtype": torch.float32, "attn_implementation": "eager"}
    if args.experts_impl:
        kw["experts_implementation"] = args.experts_impl
    t0 = time.perf_counter()
    model = DeepseekV4ForCausalLM.from_pretrained(args.model, **kw).eval()
    load_s = time.perf_counter() - t0
    for name, p in list(model.named_parameters()) + list(model.named_buffers()):
        if p.is_floating_point() and p.dtype != torch.float32:
            sys.exit(f"forward_hf: {name} is {p.dtype}, not float32")
    return model, load_s


def stat(v):
    return {"tok_s_best": max(v) if v else 0.0, "tok_s_median": statistics.median(v) if v else 0.0, "tok_s": v}


def bench(args, torch):
    from transformers.cache_utils import DynamicCache

    model, load_s = load(args, torch)
    cfg = model.config
    V = cfg.vocab_size
    P, N, B, R = args.prompt_len, args.decode, args.batch, args.reps
    w = min(N, WARMUP_STEPS)
    tok_len = P + w + R * N
    streams = [splitmix64_stream(args.seed + b, tok_len, V) for b in range(B)]
    h = 0xCBF29CE484222325
    for s in streams:
        h = fnv1a(h, s)
    toks = torch.tensor(streams, dtype=torch.long)  # [B, tok_len]

    def check(logits):
        if not bool(torch.isfinite(logits).all()):
            sys.exit("forward_hf: non-finite logits")

    def prefill(rows):
        cache = DynamicCache(config=cfg)
        t0 = time.perf_counter()
        out = model(input_ids=toks[rows, :P], past_key_values=cache, use_cache=True, logits_to_keep=1)
        t = time.perf_counter() - t0
        check(out.logits)
        return out, t

    def steps(rows, cache, k0, n):
        t0 = time.perf_counter()
        for k in range(k0, k0 + n):
            out = model(input_ids=toks[rows, P + k : P + k + 1], past_key_values=cache, use_cache=True)
        t = time.perf_counter() - t0
        check(out.logits)
        return t

    res = {"prefill": [], "decode": [], "decode_batch": []}
    logit_sum = 0.0
    batch_prefill_s = 0.0
    with torch.no_grad():
        out = None
        for r in range(R + 1):
            out, t = prefill(slice(0, 1))
            if r > 0:
                res["prefill"].append(P / t)
        logit_sum = float(out.logits[0, -1].double().sum())
        cache = out.past_key_values
        if N:
            steps(slice(0, 1), cache, 0, w)
            for r in range(R):
                res["decode"].append(N / steps(slice(0, 1), cache, w + r * N, N))
        del out, cache
        if N and B > 1:
            out, batch_prefill_s = prefill(slice(0, B))
            cache = out.past_key_values
            steps(slice(0, B), cache, 0, w)
            for r in range(R):
                res["decode_batch"].append(B * N / steps(slice(0, B), cache, w + r * N, N))

    import transformers

    doc = {
        "impl": "transformers",
        "model": args.model,
        "threads": args.threads,
        "torch_threads": torch.get_num_threads(),
        "prompt_len": P,
        "decode": N,
        "batch": B,
        "reps": R,
        "seed": args.seed,
        "tokens_fnv1a": f"{h:016x}",
        "load_s": load_s,
        "batch_prefill_s": batch_prefill_s,
        "last_logit_sum": logit_sum,
        "experts_implementation": cfg._experts_implementation,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "prefill": stat(res["prefill"]),
        "decode": stat(res["decode"]),
        "decode_batch": stat(res["decode_batch"]),
    }
    f = sys.stderr if args.json else sys.stdout
    print(
        f"forward_hf: {args.model}, transformers {transformers.__version__} (experts "
        f"{cfg._experts_implementation}), {torch.get_num_threads()} thread(s), load {load_s:.2f} s",
        file=f,
    )
    print(f"  prefill {P} tokens:        best {doc['prefill']['tok_s_best']:9.1f} tok/s  "
          f"median {doc['prefill']['tok_s_median']:9.1f} tok/s  ({R} reps)", file=f)
    if N:
        print(f"  decode  {N} x 1 token:     best {doc['decode']['tok_s_best']:9.1f} tok/s  "
              f"median {doc['decode']['tok_s_median']:9.1f} tok/s", file=f)
    if N and B > 1:
        print(f"  decode  {N} x {B} sequences: best {doc['decode_batch']['tok_s_best']:9.1f} tok/s  "
              f"median {doc['decode_batch']['tok_s_median']:9.1f} tok/s  (aggregate; batched prefill "
              f"{batch_prefill_s:.2f} s)", file=f)
    if args.json:
        print(json.dumps(doc))
    return 0


def check(args, torch):
    import numpy as np
    from transformers.cache_utils import DynamicCache

    model, _ = load(args, torch)
    cfg = model.config
    n = args.check_len
    ids = torch.tensor([splitmix64_stream(args.seed, n, cfg.vocab_size)], dtype=torch.long)
    ours = np.fromfile(args.check, dtype="<f4")
    if ours.size != n * cfg.vocab_size:
        sys.exit(f"forward_hf: {args.check} holds {ours.size} floats, expected {n} x {cfg.vocab_size}")
    ours = torch.from_numpy(ours.reshape(n, cfg.vocab_size).astype("float32"))
    with torch.no_grad():
        full = model(input_ids=ids, use_cache=False).logits[0].float()
        tail = min(8, n - 1)
        cache = DynamicCache(config=cfg)
        parts = [model(input_ids=ids[:, : n - tail], past_key_values=cache, use_cache=True).logits[0]]
        for i in range(n - tail, n):
            parts.append(model(input_ids=ids[:, i : i + 1], past_key_values=cache, use_cache=True).logits[0])
        cached = torch.cat(parts).float()
    scale = float(full.abs().max())
    diff = (ours - full).abs()
    per_pos = diff.max(dim=1).values
    doc = {
        "n_tokens": n,
        "vocab_size": cfg.vocab_size,
        "max_abs_logit": scale,
        "max_abs_diff": float(diff.max()),
        "max_rel_diff": float(diff.max()) / scale if scale else float("inf"),
        "worst_position": int(per_pos.argmax()),
        "argmax_agree": float((ours.argmax(dim=1) == full.argmax(dim=1)).float().mean()),
        "hf_cached_vs_full_max_rel_diff": float((cached - full).abs().max()) / scale if scale else 0.0,
    }
    print(json.dumps(doc))
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--prompt-len", type=int, default=256)
    ap.add_argument("--decode", type=int, default=32)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--experts-impl", default=None, help="transformers' experts_implementation (default: its own)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--emit-tokens", type=int, metavar="N")
    ap.add_argument("--check", metavar="OURS.bin")
    ap.add_argument("--check-len", type=int, default=0)
    args = ap.parse_args()
    if args.prompt_len < 1 or args.decode < 0 or args.batch < 1 or args.reps < 1 or args.threads < 1:
        ap.error("prompt-len, batch, reps and threads must be >= 1, decode >= 0")

    if args.emit_tokens:
        print(",".join(str(t) for t in splitmix64_stream(args.seed, args.emit_tokens, vocab_of(args.model))))
        return 0

    # before torch starts its pools
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    if args.check:
        if args.check_len < 2:
            ap.error("--check needs --check-len >= 2")
        return check(args, torch)
    return bench(args, torch)


if __name__ == "__main__":
    sys.exit(main())
