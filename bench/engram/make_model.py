#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""A random DeepSeek-V4 checkpoint with Engram layers, for bench/engram.

    python3 bench/engram/make_model.py --out DIR [--quick]

Writes DIR/config.json and DIR/model.safetensors (the save_pretrained spelling of
model/weights.h, plus the Engram tensors: model.layers.L.engram.{wkv,x_norm,k_norm}.weight and
model.engram.compression_map). The tables are not in the checkpoint: `dp-engram make-random
--config DIR/config.json` writes them (bench/engram/run does). Weights are random normal
(1/sqrt(fan-in)); the benchmark measures throughput, not text.

The model (about 190M parameters, 0.75 GB fp32): vocab 4096, hidden 1024, 6 layers
[HCA, CSA, sliding, HCA, CSA, sliding], 8 heads of 128 (rope 64), q rank 384, 4 output groups
of rank 256, hc_mult 4, 16 routed experts (2 per token) of 512, window 128, compress rates 4 / 32.
Engram at layers 1 and 4: n-grams 2..3, 8 heads each (16 columns), head_dim 128, bf16 rows of
256 bytes; engram_vocab_size 1342177 per order: 2 x 16 x 1342177 rows = 11.0 GB of tables
(--quick: 65537 per order, 0.54 GB).
"""
import argparse
import json
import os

import numpy as np
from safetensors.numpy import save_file

V, D, L, H, d, Q, G, R, n = 4096, 1024, 6, 8, 128, 384, 4, 256, 4
E, K, I, nI, c, kI, W, mC, mH = 16, 2, 512, 8, 64, 16, 128, 4, 32
TYPES = ["heavily_compressed_attention", "compressed_sparse_attention", "sliding_attention",
         "heavily_compressed_attention", "compressed_sparse_attention", "sliding_attention"]
MLP = ["hash_moe"] + ["moe"] * (L - 1)
ENGRAM_LAYERS, NGRAM, EHEADS, EHD = [1, 4], 3, 8, 128


def config(vocab_per_order):
    return {
        "model_type": "deepseek_v4", "vocab_size": V, "hidden_size": D,
        "moe_intermediate_size": I, "num_hidden_layers": L, "num_attention_heads": H,
        "num_key_value_heads": 1, "head_dim": d, "q_lora_rank": Q,
        "partial_rotary_factor": 0.5, "num_experts_per_tok": K, "n_routed_experts": E,
        "n_shared_experts": 1, "scoring_func": "sqrtsoftplus", "routed_scaling_factor": 1.5,
        "rope_theta": 10000.0, "compress_rope_theta": 160000.0,
        "layer_types": TYPES, "mlp_layer_types": MLP,
        "compress_rates": {"compressed_sparse_attention": mC, "heavily_compressed_attention": mH},
        "hc_mult": n, "hc_sinkhorn_iters": 20, "hc_eps": 1e-6, "rms_norm_eps": 1e-6,
        "swiglu_limit": 10.0, "sliding_window": W, "o_groups": G, "o_lora_rank": R,
        "index_n_heads": nI, "index_head_dim": c, "index_topk": kI,
        "tie_word_embeddings": False, "bos_token_id": 0, "eos_token_id": 1,
        "pad_token_id": 2, "num_nextn_predict_layers": 0,
        "engram_layer_ids": ENGRAM_LAYERS, "engram_max_ngram_size": NGRAM,
        "engram_n_heads": EHEADS, "engram_head_dim": EHD,
        "engram_vocab_size": [vocab_per_order] * (NGRAM - 1), "engram_pad_id": 2,
        "engram_compressed_vocab_size": 3200, "engram_seed": 0,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)

    def lin(o, i):
        return (rng.standard_normal((o, i), dtype=np.float32) / np.sqrt(i)).astype(np.float32)

    def vec(k, lo=0.6, hi=1.4):
        return rng.uniform(lo, hi, k).astype(np.float32)

    t = {"model.embed_tokens.weight": rng.standard_normal((V, D), dtype=np.float32),
         "model.norm.weight": vec(D), "head.weight": lin(V, D),
         "model.hc_head.hc_fn": lin(n, n * D), "model.hc_head.hc_base": vec(n, -0.5, 0.5),
         "model.hc_head.hc_scale": vec(1, 0.5, 1.5)}
    for l in range(L):
        p = f"model.layers.{l}."
        for site in ("attn", "ffn"):
            t[p + f"hc_{site}_fn"] = lin((2 + n) * n, n * D)
            t[p + f"hc_{site}_base"] = vec((2 + n) * n, -0.5, 0.5)
            t[p + f"hc_{site}_scale"] = vec(3, 0.5, 1.5)
        t[p + "attn_norm.weight"] = vec(D)
        t[p + "ffn_norm.weight"] = vec(D)
        t[p + "attn.wq_a.weight"] = lin(Q, D)
        t[p + "attn.q_norm.weight"] = vec(Q)
        t[p + "attn.wq_b.weight"] = lin(H * d, Q)
        t[p + "attn.wkv.weight"] = lin(d, D)
        t[p + "attn.norm.weight"] = vec(d)
        t[p + "attn.wo_a.weight"] = lin(G * R, H * d // G)
        t[p + "attn.wo_b.weight"] = lin(D, G * R)
        t[p + "attn.attn_sink"] = vec(H, -1, 1)
        if TYPES[l] != "sliding_attention":
            x, m = (2, mC) if TYPES[l] == "compressed_sparse_attention" else (1, mH)
            t[p + "attn.compressor.wkv.weight"] = lin(x * d, D)
            t[p + "attn.compressor.wgate.weight"] = lin(x * d, D)
            t[p + "attn.compressor.ape"] = vec(m * x * d, -0.7, 0.7).reshape(m, x * d)
            t[p + "attn.compressor.norm.weight"] = vec(d)
        if TYPES[l] == "compressed_sparse_attention":
            q = p + "attn.indexer."
            t[q + "compressor.wkv.weight"] = lin(2 * c, D)
            t[q + "compressor.wgate.weight"] = lin(2 * c, D)
            t[q + "compressor.ape"] = vec(mC * 2 * c, -0.7, 0.7).reshape(mC, 2 * c)
            t[q + "compressor.norm.weight"] = vec(c)
            t[q + "wq_b.weight"] = lin(nI * c, Q)
            t[q + "weights_proj.weight"] = lin(nI, D)
        t[p + "ffn.gate.weight"] = lin(E, D)
        if MLP[l] == "hash_moe":
            t[p + "ffn.gate.tid2eid"] = np.stack([rng.permutation(E)[:K] for _ in range(V)]).astype(np.int64)
        else:
            t[p + "ffn.gate.bias"] = vec(E, -0.25, 0.25)
        t[p + "ffn.shared_experts.w1.weight"] = lin(I, D)
        t[p + "ffn.shared_experts.w3.weight"] = lin(I, D)
        t[p + "ffn.shared_experts.w2.weight"] = lin(D, I)
        for e in range(E):
            t[p + f"ffn.experts.{e}.w1.weight"] = lin(I, D)
            t[p + f"ffn.experts.{e}.w3.weight"] = lin(I, D)
            t[p + f"ffn.experts.{e}.w2.weight"] = lin(D, I)
    F = (NGRAM - 1) * EHEADS * EHD
    for l in ENGRAM_LAYERS:
        p = f"model.layers.{l}.engram."
        t[p + "wkv.weight"] = lin((n + 1) * D, F)
        t[p + "x_norm.weight"] = vec(n * D).reshape(n, D)
        t[p + "k_norm.weight"] = vec(n * D).reshape(n, D)
    t["model.engram.compression_map"] = rng.integers(0, 3200, V).astype(np.int64)

    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(config(65537 if args.quick else 1342177), f, indent=1, sort_keys=True)
    save_file(t, os.path.join(args.out, "model.safetensors"))
    print(f"{args.out}: {sum(v.size for v in t.values()) / 1e6:.0f}M parameters")


if __name__ == "__main__":
    main()
