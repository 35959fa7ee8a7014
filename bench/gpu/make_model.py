#!/usr/bin/env python3
"""Write the random bf16 DeepSeek-V4 checkpoints of bench/gpu (issue 6's bench).

Presets:
  gpu-mid    hidden 4096, 8 layers alternating HCA / CSA, 64 routed experts top-6 of width 2048,
             the real head (vocab 129280) and attention sizes (64 heads of 512, q rank 1024,
             8 output groups of rank 1024, compress rates 4 / 128, window 128, indexer 64 heads
             of 128, top-512, hc_mult 4): about 16 B parameters, 32 GB in bf16.
  gpu-small  the same structure at hidden 1024 / 16 experts (smoke tests of the bench).

Every parameter is drawn by bench/make_random_model.py's rules (random_value), with a generator
on the GPU when there is one (a CPU generator otherwise), so it takes seconds, not minutes. The
checkpoint is save_pretrained's (config.json + model.safetensors shards), written atomically to
--out; an existing one with the same recipe (bench-recipe.json) is kept unless --force.

Usage:
  python3 bench/gpu/make_model.py [--preset gpu-mid|gpu-small] [--out DIR] [--seed S] [--force]
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # bench/, for make_random_model's rules
import make_random_model as mrm  # noqa: E402

LAYERS8 = ["heavily_compressed_attention", "compressed_sparse_attention"] * 4
COMMON = {
    "num_key_value_heads": 1,
    "partial_rotary_factor": 64 / 512,
    "n_shared_experts": 1,
    "scoring_func": "sqrtsoftplus",
    "routed_scaling_factor": 1.5,
    "rope_theta": 10000.0,
    "compress_rope_theta": 160000.0,
    "layer_types": LAYERS8,
    "mlp_layer_types": ["hash_moe", "hash_moe"] + ["moe"] * 6,
    "compress_rates": {"compressed_sparse_attention": 4, "heavily_compressed_attention": 128},
    "hc_mult": 4,
    "hc_sinkhorn_iters": 20,
    "hc_eps": 1e-6,
    "rms_norm_eps": 1e-6,
    "swiglu_limit": 10.0,
    "sliding_window": 128,
    "index_n_heads": 64,
    "index_head_dim": 128,
    "index_topk": 512,
    "max_position_embeddings": 1048576,
    "tie_word_embeddings": False,
    "bos_token_id": 0,
    "eos_token_id": 1,
    "num_hidden_layers": 8,
}
PRESETS = {
    "gpu-mid": dict(COMMON, vocab_size=129280, hidden_size=4096, moe_intermediate_size=2048,
                    num_attention_heads=64, head_dim=512, q_lora_rank=1024, o_groups=8,
                    o_lora_rank=1024, n_routed_experts=64, num_experts_per_tok=6),
    "gpu-small": dict(COMMON, vocab_size=32000, hidden_size=1024, moe_intermediate_size=512,
                      num_attention_heads=16, head_dim=512, q_lora_rank=512, o_groups=4,
                      o_lora_rank=256, n_routed_experts=16, num_experts_per_tok=6),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="gpu-mid", choices=sorted(PRESETS))
    ap.add_argument("--out", help="output directory (default build/bench-models/v4-<preset>)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args()
    out = os.path.abspath(args.out or os.path.join(HERE, "..", "..", "build", "bench-models", f"v4-{args.preset}"))
    want = {"preset": args.preset, "seed": args.seed, "model": PRESETS[args.preset], "dtype": "bfloat16",
            "version": 1}
    rpath = os.path.join(out, "bench-recipe.json")
    if not args.force and os.path.exists(os.path.join(out, "config.json")):
        try:
            with open(rpath) as f:
                if json.load(f) == want:
                    print(f"make_model: {out} is up to date")
                    return 0
        except (OSError, ValueError):
            pass

    import torch
    from transformers import DeepseekV4Config, DeepseekV4ForCausalLM

    t0 = time.time()
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = DeepseekV4Config(**PRESETS[args.preset])
    cfg._attn_implementation = "eager"
    torch.manual_seed(args.seed)
    torch.set_default_device(dev)
    torch.set_default_dtype(torch.bfloat16)
    model = DeepseekV4ForCausalLM(cfg).eval()
    gen = torch.Generator(device=dev).manual_seed(args.seed)
    with torch.no_grad():
        sd = model.state_dict(keep_vars=True)
        for name in sorted(sd):
            sd[name].copy_(mrm.random_value(name, sd[name], cfg, gen, torch))
    torch.set_default_dtype(torch.float32)
    n_params = sum(p.numel() for p in model.parameters())
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=".tmp-" + os.path.basename(out))
    try:
        model.save_pretrained(tmp, safe_serialization=True, max_shard_size="64GB")
        with open(os.path.join(tmp, "bench-recipe.json"), "w") as f:
            json.dump(want, f, indent=1)
        if os.path.exists(out):
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    size = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
    print(f"make_model: {args.preset}: {n_params / 1e9:.2f}B params, {size / 1e9:.1f} GB in {out} "
          f"({time.time() - t0:.0f} s on {dev})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
