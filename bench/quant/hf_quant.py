#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""transformers on the CPU with bench/quant's checkpoint: its anchor for bench-quant.

Loads the published-format directory with DeepseekV4ForCausalLM.from_pretrained(dtype=bfloat16)
(transformers' fine-grained FP8 path dequantizes every FP8/FP4 weight to bf16 at load; needs
accelerate), then on the same thread count and the same token streams as bench-quant
(bench/bench_util.py): decode at batch B (B prompts of P tokens, then N greedy steps with the
cache) and a one-call prefill of n tokens (logits of the last token only, as bench-quant).
Prints one JSON object (tok/s, load seconds, peak RSS) as its last line.

Usage: hf_quant.py --model DIR [--threads T] [--batches 1] [--decode N] [--prompt-len P]
                   [--prefill N] [--rounds R]
Needs torch, transformers 5.17 and accelerate (a venv; never CI).
"""

import argparse
import json
import os
import resource
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from bench_util import splitmix64_stream  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", default="1")
    ap.add_argument("--decode", type=int, default=16)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--prefill", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=1)
    a = ap.parse_args()
    batches = [int(x) for x in a.batches.split(",") if x]
    torch.set_num_threads(a.threads)

    import transformers
    from transformers import DeepseekV4ForCausalLM

    t0 = time.perf_counter()
    model = DeepseekV4ForCausalLM.from_pretrained(a.model, dtype=torch.bfloat16)
    model.eval()
    load_s = time.perf_counter() - t0
    dtypes = sorted({str(p.dtype) for p in model.parameters()})
    V = model.config.vocab_size
    out = {"transformers": transformers.__version__, "torch": torch.__version__, "threads": a.threads,
           "load_s": load_s, "param_dtypes": dtypes, "decode": {}, "prefill": None}
    print(f"hf_quant: loaded {a.model} in {load_s:.1f} s, parameters {dtypes}", file=sys.stderr, flush=True)

    with torch.inference_mode():
        for B in batches:
            best = None
            for _ in range(a.rounds):
                ids = torch.tensor([splitmix64_stream(14 + b, a.prompt_len, V) for b in range(B)])
                o = model(input_ids=ids, use_cache=True, logits_to_keep=1)
                cache = o.past_key_values
                nxt = o.logits[:, -1].argmax(-1, keepdim=True)
                t = time.perf_counter()
                for _ in range(a.decode):
                    o = model(input_ids=nxt, past_key_values=cache, use_cache=True, logits_to_keep=1)
                    cache = o.past_key_values
                    nxt = o.logits[:, -1].argmax(-1, keepdim=True)
                dt = time.perf_counter() - t
                best = dt if best is None or dt < best else best
            out["decode"][str(B)] = B * a.decode / best
            print(f"hf_quant: decode batch {B}: {B * a.decode / best:.3f} tok/s", file=sys.stderr, flush=True)
        if a.prefill:
            best = None
            for _ in range(a.rounds):
                ids = torch.tensor([splitmix64_stream(1000, a.prefill, V)])
                t = time.perf_counter()
                model(input_ids=ids, use_cache=True, logits_to_keep=1)
                dt = time.perf_counter() - t
                best = dt if best is None or dt < best else best
            out["prefill"] = a.prefill / best
            print(f"hf_quant: prefill {a.prefill}: {a.prefill / best:.3f} tok/s", file=sys.stderr, flush=True)
    out["rss_peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps(out))


if __name__ == "__main__":
    main()
