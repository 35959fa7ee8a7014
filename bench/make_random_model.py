#!/usr/bin/env python3
"""Write a random DeepSeek-V4 checkpoint for bench/forward (bench-forward vs transformers).

The model is transformers' DeepseekV4ForCausalLM (5.17) with real V4 structure at a size a
2-core CPU runs a 512-token forward of in seconds: sliding, compressed-sparse (CSA, with the
lightning indexer) and heavily-compressed (HCA) attention layers, hash-MoE and top-k MoE
layers, mHC with hc_mult 4, grouped low-rank output projection. Every parameter and
persistent buffer is drawn from a seeded generator as scripts/parity/make_parity.py does
(norm gains, sinks, position biases, mHC fn/base/scale, router biases all non-trivial), and
the hash-MoE tid2eid tables hold distinct experts per token id.

The checkpoint is written with save_pretrained (config.json + model.safetensors), every
floating tensor in bf16 (like model/embedded; both implementations widen to fp32 on load, so
they compute in fp32 from identical weights), into --out, atomically. An existing checkpoint
with the same recipe (recorded in bench-recipe.json) is kept unless --force.

Usage:
  python3 bench/make_random_model.py [--preset mid|small] [--out DIR] [--seed S] [--force]
"""

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))

# `model` goes to DeepseekV4Config verbatim.
PRESETS = {
    # ~300M parameters (ca. 120M active per token incl. the 32k-vocab head): one 512-token
    # prefill is ~0.24 TFLOP, 1-3 s on one core of a recent Xeon; one decode step reads
    # ~0.5 GB of weights.
    "mid": {
        "vocab_size": 32000,
        "hidden_size": 1024,
        "moe_intermediate_size": 512,
        "num_hidden_layers": 8,
        "num_attention_heads": 8,
        "num_key_value_heads": 1,
        "head_dim": 128,
        "q_lora_rank": 384,
        "partial_rotary_factor": 0.5,  # rope dim 64 of 128 (index_head_dim 64 >= 64)
        "num_experts_per_tok": 4,
        "n_routed_experts": 16,
        "n_shared_experts": 1,
        "scoring_func": "sqrtsoftplus",
        "routed_scaling_factor": 1.5,
        "rope_theta": 10000.0,
        "compress_rope_theta": 160000.0,
        "layer_types": [
            "sliding_attention",
            "compressed_sparse_attention",
            "heavily_compressed_attention",
            "compressed_sparse_attention",
            "heavily_compressed_attention",
            "compressed_sparse_attention",
            "heavily_compressed_attention",
            "sliding_attention",
        ],
        "mlp_layer_types": ["hash_moe", "hash_moe", "moe", "moe", "moe", "moe", "moe", "moe"],
        "compress_rates": {"compressed_sparse_attention": 4, "heavily_compressed_attention": 32},
        "hc_mult": 4,
        "hc_sinkhorn_iters": 20,
        "hc_eps": 1e-6,
        "rms_norm_eps": 1e-6,
        "swiglu_limit": 10.0,
        "sliding_window": 128,
        "o_groups": 4,
        "o_lora_rank": 256,
        "index_n_heads": 8,
        "index_head_dim": 64,
        "index_topk": 64,
        "max_position_embeddings": 65536,
        "tie_word_embeddings": False,
        "bos_token_id": 0,
        "eos_token_id": 1,
    },
    # A quick one for smoke tests of the bench itself.
    "small": {
        "vocab_size": 4096,
        "hidden_size": 256,
        "moe_intermediate_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 1,
        "head_dim": 64,
        "q_lora_rank": 128,
        "partial_rotary_factor": 0.5,
        "num_experts_per_tok": 2,
        "n_routed_experts": 8,
        "n_shared_experts": 1,
        "layer_types": [
            "sliding_attention",
            "compressed_sparse_attention",
            "heavily_compressed_attention",
            "compressed_sparse_attention",
        ],
        "mlp_layer_types": ["hash_moe", "moe", "moe", "moe"],
        "compress_rates": {"compressed_sparse_attention": 4, "heavily_compressed_attention": 16},
        "hc_mult": 4,
        "sliding_window": 64,
        "o_groups": 2,
        "o_lora_rank": 64,
        "index_n_heads": 8,
        "index_head_dim": 32,
        "index_topk": 16,
        "max_position_embeddings": 65536,
        "tie_word_embeddings": False,
        "bos_token_id": 0,
        "eos_token_id": 1,
    },
}


def random_value(name, t, cfg, gen, torch):
    """A seeded random replacement for state-dict entry `name` (same shape and dtype as t);
    the rules of scripts/parity/make_parity.py."""
    shape = tuple(t.shape)
    last = name.split(".")[-1]

    def normal(std):
        return torch.randn(shape, generator=gen, dtype=torch.float32) * std

    def uniform(lo, hi):
        return lo + (hi - lo) * torch.rand(shape, generator=gen, dtype=torch.float32)

    if name.endswith("tid2eid"):  # distinct experts for each token id
        rows = torch.rand((shape[0], cfg.n_routed_experts), generator=gen).argsort(dim=1)
        return rows[:, : shape[1]].to(t.dtype)
    if name.endswith("e_score_correction_bias"):
        return normal(0.25)
    if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
        return uniform(0.6, 1.4)
    if last == "sinks":
        return normal(1.0)
    if last == "position_bias":
        return normal(0.7)
    if last in ("fn", "hc_fn"):
        return normal(1.0 / math.sqrt(shape[1]))
    if last in ("base", "hc_base"):
        return normal(0.5)
    if last in ("scale", "hc_scale"):
        return uniform(0.5, 1.5)
    if name.endswith("embed_tokens.weight"):
        return normal(1.0)
    if name.endswith("experts.gate_up_proj") or name.endswith("experts.down_proj"):
        return normal(1.0 / math.sqrt(shape[2]))  # [E, out, in]
    if len(shape) == 2:  # every nn.Linear weight, [out, in]
        return normal(1.0 / math.sqrt(shape[1]))
    raise RuntimeError(f"no randomisation rule for {name} {shape}")


def recipe(preset, seed):
    return {"preset": preset, "seed": seed, "model": PRESETS[preset], "dtype": "bfloat16", "version": 1}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="mid", choices=sorted(PRESETS))
    ap.add_argument("--out", help="output directory (default build/bench-models/v4-<preset>)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--force", action="store_true", help="rewrite even if the same recipe is there")
    args = ap.parse_args()
    out = os.path.abspath(args.out or os.path.join(REPO, "build", "bench-models", f"v4-{args.preset}"))
    want = recipe(args.preset, args.seed)

    rpath = os.path.join(out, "bench-recipe.json")
    if not args.force and all(os.path.exists(os.path.join(out, f)) for f in ("config.json", "model.safetensors")):
        try:
            with open(rpath) as f:
                if json.load(f) == want:
                    print(f"make_random_model: {out} is up to date")
                    return 0
        except (OSError, ValueError):
            pass

    import torch
    from transformers import DeepseekV4Config, DeepseekV4ForCausalLM

    t0 = time.time()
    cfg = DeepseekV4Config(**PRESETS[args.preset])
    cfg._attn_implementation = "eager"
    cfg._experts_implementation = "eager"
    torch.manual_seed(args.seed)
    model = DeepseekV4ForCausalLM(cfg).to(torch.float32).eval()
    gen = torch.Generator().manual_seed(args.seed)
    sd = model.state_dict(keep_vars=True)
    with torch.no_grad():
        for name in sorted(sd):
            sd[name].copy_(random_value(name, sd[name], cfg, gen, torch))
        for name, t in model.state_dict().items():
            if name.endswith("tid2eid"):
                srt = t.sort(dim=1).values
                assert bool((srt[:, 1:] != srt[:, :-1]).all()), name
                assert int(t.min()) >= 0 and int(t.max()) < cfg.n_routed_experts, name
            elif t.numel() > 1:
                assert float(t.float().std()) > 0, name
    n_params = sum(p.numel() for p in model.parameters())

    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=".tmp-" + os.path.basename(out))
    try:
        model.to(torch.bfloat16).save_pretrained(tmp, safe_serialization=True)
        with open(os.path.join(tmp, "bench-recipe.json"), "w") as f:
            json.dump(want, f, indent=1)
        if os.path.exists(out):
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    size = os.path.getsize(os.path.join(out, "model.safetensors"))
    print(
        f"make_random_model: {args.preset}: {n_params / 1e6:.1f}M params, {cfg.num_hidden_layers} layers "
        f"{cfg.layer_types}, {size / 1e6:.0f} MB bf16 in {out} ({time.time() - t0:.1f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
