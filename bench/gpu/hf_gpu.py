#!/usr/bin/env python3
"""The anchor of bench/gpu: transformers' DeepseekV4ForCausalLM on the GPU, measured as bench-gpu
measures ours (same checkpoint, dtype, batch, context and token streams).

  hf_gpu.py --model DIR [--dtype bf16|f32] [--batch B,...] [--context C,...] [--decode N]
            [--prefill] [--prefill-max T] [--chunk P] [--reps R] [--seed S] [--budget-s T]
            [--device cuda:0|cpu] [--json]

Every (batch, context) pair is measured with the model loaded once; one JSON line each.

The model is from_pretrained(dtype=..., attn_implementation="eager") on cuda:0, in eval mode,
under torch.no_grad(); every timed region ends with torch.cuda.synchronize().

  decode   the B sequences are prefilled to C tokens first (untimed, in chunks of P tokens, with
           one DynamicCache; transformers has no way to stand a cache at position C without
           computing it), then 4 warm-up steps and R rounds of N steps of [B, 1];
           tok/s = B * N / round time. When the untimed prefill would exceed --budget-s (judged
           from the first chunk), decode is reported as skipped.
  prefill  with --prefill, where B * C <= --prefill-max: B fresh sequences, C tokens each, in
           chunks of P (logits_to_keep=1); tok/s = B * C / time, after a 256-token warm-up.
The linears run under torch.autocast(bf16) for a bf16 model: transformers 5.17's V4 leaves the
mHC outputs in fp32, and bf16 weights then refuse them.
Out of memory is caught and reported as skipped (with the message), not a crash.
Tokens: splitmix64 streams (sequence b: seed + b, token (x >> 11) % vocab) as bench-gpu.
"""

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from bench_util import splitmix64_stream  # noqa: E402 (bench/bench_util.py)

WARMUP_STEPS = 4


def one(args, torch, model, cfg, dev, on_gpu, B, C):
    from transformers.cache_utils import DynamicCache

    N, P, R = args.decode, args.chunk, args.reps
    L = C if args.prefill and B * C <= args.prefill_max else 0
    n_tok = max(C, L) + WARMUP_STEPS + R * N + 1
    toks = torch.tensor([splitmix64_stream(args.seed + b, n_tok, cfg.vocab_size) for b in range(B)],
                        dtype=torch.long, device=dev)
    doc = {"impl": "transformers", "batch": B, "context": C, "decode": N, "prefill_len": L, "reps": R}
    if on_gpu:
        torch.cuda.reset_peak_memory_stats(dev)

    def sync():
        if on_gpu:
            torch.cuda.synchronize(dev)

    def feed(cache, start, end, budget=None):
        """Feed tokens [start, end) of every sequence in chunks; seconds (None: over budget)."""
        t0 = time.perf_counter()
        pos = start
        while pos < end:
            n = min(P, end - pos)
            model(input_ids=toks[:, pos:pos + n], past_key_values=cache, use_cache=True, logits_to_keep=1)
            pos += n
            if budget is not None and pos < end:
                sync()
                spent = time.perf_counter() - t0
                if spent / (pos - start) * (end - start) > budget:
                    return None
        sync()
        return time.perf_counter() - t0

    if L > 0:
        try:
            feed(DynamicCache(config=cfg), 0, min(L, 256))
            t = feed(DynamicCache(config=cfg), 0, L)
            doc["prefill_tok_s"] = B * L / t
        except torch.OutOfMemoryError as e:
            doc["prefill_skipped"] = f"out of memory: {str(e).splitlines()[0]}"
        if on_gpu:
            torch.cuda.empty_cache()
    try:
        cache = DynamicCache(config=cfg)
        t = feed(cache, 0, C, budget=args.budget_s) if C > 0 else 0.0
        if t is None:
            doc["decode_skipped"] = f"prefilling {B} x {C} tokens would take over {args.budget_s:.0f} s"
        else:
            doc["context_prefill_s"] = t
            step = C

            def steps(n):
                nonlocal step
                for _ in range(n):
                    model(input_ids=toks[:, step:step + 1], past_key_values=cache, use_cache=True)
                    step += 1
                sync()

            steps(WARMUP_STEPS)
            v = []
            for _ in range(R):
                t0 = time.perf_counter()
                steps(N)
                v.append(B * N / (time.perf_counter() - t0))
            doc["decode_tok_s"] = max(v)
            doc["decode_tok_s_median"] = statistics.median(v)
        del cache
    except torch.OutOfMemoryError as e:
        doc["decode_skipped"] = f"out of memory: {str(e).splitlines()[0]}"
    doc["peak_bytes"] = torch.cuda.max_memory_allocated(dev) if on_gpu else 0
    return doc


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "f32"])
    ap.add_argument("--batch", default="1")
    ap.add_argument("--context", default="4096")
    ap.add_argument("--decode", type=int, default=32)
    ap.add_argument("--prefill", action="store_true")
    ap.add_argument("--prefill-max", type=int, default=65536)
    ap.add_argument("--chunk", type=int, default=2048)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--budget-s", type=float, default=120.0)
    ap.add_argument("--device", default="cuda:0", help="cuda:0, or cpu for a smoke test")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import torch
    import transformers
    from transformers import DeepseekV4ForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    dev = torch.device(args.device)
    on_gpu = dev.type == "cuda"
    t0 = time.perf_counter()
    # .to(dev), not device_map: that needs accelerate, which the GPU machine may lack
    model = DeepseekV4ForCausalLM.from_pretrained(args.model, dtype=dtype,
                                                  attn_implementation="eager").to(dev).eval()
    load_s = time.perf_counter() - t0
    cfg = model.config
    amp = torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)
    for C in [int(x) for x in args.context.split(",")]:
        for B in [int(x) for x in args.batch.split(",")]:
            with torch.no_grad(), amp:
                doc = one(args, torch, model, cfg, dev, on_gpu, B, C)
            doc.update({"model": args.model, "dtype": args.dtype, "load_s": load_s,
                        "gpu": torch.cuda.get_device_name(dev) if on_gpu else "cpu",
                        "torch": torch.__version__, "transformers": transformers.__version__})
            if args.json:
                print(json.dumps(doc), flush=True)
            else:
                print(" ".join(f"{k}={v}" for k, v in doc.items()), flush=True)
            del doc
            if on_gpu:
                torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
