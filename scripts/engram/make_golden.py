#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Golden data for the Engram fusion (DeepSeek-V4.1 form), written from the formula alone.

    python3 scripts/engram/make_golden.py [--device cpu|cuda] [--out tests/engram/fusion]

The fusion, per token, with e = the token's looked-up table rows (each head_dim wide,
dequantized, concatenated in column order) and kv = W_kv . e (no bias; n keys, one per
residual stream, then one shared value), for each stream m of the n mHC streams:

    dot   = sum_d x[m,d] * w[m,d] * key[m,d] * rsqrt(mean(x[m]^2) + eps)
            * rsqrt(mean(key[m]^2) + eps) / sqrt(D)        w = x_norm * k_norm
    g     = sigmoid(sign(dot) * sqrt(max(|dot|, 1e-6)))
    x[m] += g * value

applied to the streams before layer L's attention site. fuse() below is that, in fp32.

op.safetensors + op.json
    The op alone on random inputs (tests/engram/test_fusion.c runs the cpu backend's
    engram_fuse on them): X_in [T, n, D], rows [T, E], wkv [(n+1)D, E], x_norm, k_norm
    [n, D], X_out. Token 0 has all-zero rows (kv = 0: dot = 0, g = 1/2, x unchanged);
    token 1's x is scaled by 1e3 (the norms must cancel it).

model/
    A tiny random DeepSeek-V4 (transformers' DeepseekV4ForCausalLM, fp32, eager, every
    parameter random as scripts/parity/make_parity.py does) with Engram at two layers: the
    forward is transformers' own, with fuse() inserted by a pre-hook on each Engram layer;
    the rows come from random tables (bf16-exact values, so a bf16 table file holds them
    exactly) addressed by the public demo's n-gram hashing (tests/engram/gen_fixtures.py,
    checked against the golden hash vectors). model.safetensors carries the base weights,
    the Engram weights (model.layers.L.engram.{wkv,x_norm,k_norm}.weight), the compression
    map (model.engram.compression_map) and the tables
    (model.layers.L.engram.multi_head_embedding.embedding.weight). tokens.json, logits.bin
    (float32 [n_tokens][vocab], one call).

noengram/
    The same base model without Engram (config without engram_* keys, checkpoint without
    Engram tensors) and its transformers logits (logits.bin).

zero/
    The Engram model with every Engram wkv zero (no tables: use model/'s): its logits must
    equal noengram/'s exactly.

served/
    model/'s shape with a byte-level vocabulary (256 bytes + 64 specials), which dualpathd
    can serve (tests/daemon converts its tables with dp-engram and runs sessions on it):
    model.safetensors with the tables, tokens.json (bytes), logits.bin.

Deterministic (seeded CPU generators); --device only moves the forwards.
"""
import argparse
import importlib.util
import json
import math
import os
import shutil
import sys
import tempfile

import numpy as np
import torch
from safetensors.torch import load_file, save_file

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEFAULT_OUT = os.path.join(REPO, "tests", "engram", "fusion")


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


parity = _load("make_parity", os.path.join(REPO, "scripts", "parity", "make_parity.py"))
hashing = _load("gen_fixtures", os.path.join(REPO, "tests", "engram", "gen_fixtures.py"))


# ---- the formula ----------------------------------------------------------------------------

def fuse(x, e, wkv, x_norm, k_norm, eps):
    """x [..., n, D] (returned updated), e [..., E], wkv [(n+1)D, E], norms [n, D]."""
    n, D = x.shape[-2], x.shape[-1]
    kv = e @ wkv.T
    key = kv[..., : n * D].reshape(*kv.shape[:-1], n, D)
    value = kv[..., n * D:]
    w = x_norm * k_norm
    rx = torch.rsqrt(x.pow(2).mean(-1) + eps)
    rk = torch.rsqrt(key.pow(2).mean(-1) + eps)
    dot = (x * w * key).sum(-1) * rx * rk / math.sqrt(D)
    g = torch.sigmoid(torch.sign(dot) * torch.sqrt(torch.clamp(dot.abs(), min=1e-6)))
    return x + g.unsqueeze(-1) * value.unsqueeze(-2)


# ---- op data --------------------------------------------------------------------------------

def make_op(out, device):
    gen = torch.Generator().manual_seed(41)
    T, n, D, C, hd, eps = 6, 4, 16, 4, 8, 1e-6
    E = C * hd
    X = torch.randn(T, n, D, generator=gen)
    X[1] *= 1e3
    rows = torch.randn(T, E, generator=gen)
    rows[0] = 0
    wkv = torch.randn((n + 1) * D, E, generator=gen) / math.sqrt(E)
    x_norm = 0.6 + 0.8 * torch.rand(n, D, generator=gen)
    k_norm = 0.6 + 0.8 * torch.rand(n, D, generator=gen)
    Y = fuse(X.to(device), rows.to(device), wkv.to(device), x_norm.to(device),
             k_norm.to(device), eps).cpu()
    save_file({"X_in": X, "rows": rows, "wkv": wkv, "x_norm": x_norm, "k_norm": k_norm,
               "X_out": Y.contiguous()}, os.path.join(out, "op.safetensors"))
    os.chmod(os.path.join(out, "op.safetensors"), 0o644)
    with open(os.path.join(out, "op.json"), "w") as f:
        json.dump({"T": T, "n": n, "D": D, "E": E, "eps": eps, "device": str(device),
                   "torch_version": torch.__version__,
                   "max_abs_change": float((Y - X).abs().max())}, f, indent=1)
    print(f"op: T={T} n={n} D={D} E={E}, max |X_out - X_in| {float((Y - X).abs().max()):.4f}")


# ---- the tiny model ---------------------------------------------------------------------------

BASE = {
    "seed": 7,
    "n_tokens": 40,
    "chunks": [],
    "model": {
        "vocab_size": 96, "hidden_size": 16, "moe_intermediate_size": 8,
        "num_hidden_layers": 3, "num_attention_heads": 2, "num_key_value_heads": 1,
        "head_dim": 16, "q_lora_rank": 16, "partial_rotary_factor": 0.5,
        "num_experts_per_tok": 2, "n_routed_experts": 4, "n_shared_experts": 1,
        "scoring_func": "sqrtsoftplus", "routed_scaling_factor": 1.5,
        "rope_theta": 10000.0, "compress_rope_theta": 160000.0,
        "layer_types": ["heavily_compressed_attention", "sliding_attention",
                        "heavily_compressed_attention"],
        "mlp_layer_types": ["hash_moe", "moe", "moe"],
        "compress_rates": {"compressed_sparse_attention": 4, "heavily_compressed_attention": 4},
        "hc_mult": 4, "hc_sinkhorn_iters": 20, "hc_eps": 1e-6, "rms_norm_eps": 1e-6,
        "swiglu_limit": 1.5, "sliding_window": 8, "o_groups": 2, "o_lora_rank": 8,
        "index_n_heads": 8, "index_head_dim": 16, "index_topk": 4,
        "tie_word_embeddings": False,
    },
}
ENGRAM = {
    "engram_layer_ids": [0, 2],
    "engram_max_ngram_size": 3,
    "engram_n_heads": 2,
    "engram_head_dim": 8,
    "engram_vocab_size": [31, 37],
    "engram_pad_id": 2,
    "engram_compressed_vocab_size": 64,
    "engram_seed": 0,
}


def hash_cfg(cmap):
    return {"compression_map": cmap, "pad_id": ENGRAM["engram_pad_id"],
            "max_ngram_size": ENGRAM["engram_max_ngram_size"],
            "n_head_per_ngram": ENGRAM["engram_n_heads"],
            "layer_ids": ENGRAM["engram_layer_ids"],
            "engram_vocab_size": ENGRAM["engram_vocab_size"],
            "seed": ENGRAM["engram_seed"],
            "compressed_vocab_size": ENGRAM["engram_compressed_vocab_size"]}


def engram_tensors(cfg, gen):
    """Engram weights, tables and map, all random (tables bf16-exact)."""
    n, D, V = cfg.hc_mult, cfg.hidden_size, cfg.vocab_size
    N, K, hd = ENGRAM["engram_max_ngram_size"], ENGRAM["engram_n_heads"], ENGRAM["engram_head_dim"]
    C = (N - 1) * K
    cmap = torch.randint(0, ENGRAM["engram_compressed_vocab_size"], (V,), generator=gen)
    sizes = hashing.table_sizes(ENGRAM["engram_layer_ids"], ENGRAM["engram_vocab_size"], N, K)
    t = {"model.engram.compression_map": cmap.to(torch.int64)}
    for L in ENGRAM["engram_layer_ids"]:
        rows = sum(sizes[L])
        t[f"model.layers.{L}.engram.wkv.weight"] = torch.randn((n + 1) * D, C * hd, generator=gen) * (1.5 / math.sqrt(C * hd))
        t[f"model.layers.{L}.engram.x_norm.weight"] = 0.6 + 0.8 * torch.rand(n, D, generator=gen)
        t[f"model.layers.{L}.engram.k_norm.weight"] = 0.6 + 0.8 * torch.rand(n, D, generator=gen)
        table = torch.randn(rows, hd, generator=gen).to(torch.bfloat16).to(torch.float32)
        t[f"model.layers.{L}.engram.multi_head_embedding.embedding.weight"] = table
    return t, sizes


def engram_rows(t, sizes, ids):
    """Per Engram layer: [1, T, E] rows of the token sequence ids (one sequence from pos 0)."""
    cmap = [int(v) for v in t["model.engram.compression_map"]]
    _, _, hashes = hashing.ngram_hashes(hash_cfg(cmap), [list(ids)])
    out = {}
    for L in ENGRAM["engram_layer_ids"]:
        h = np.asarray(hashes[str(L)], dtype=np.int64)[0]           # [T, C] local rows
        offs = np.concatenate([[0], np.cumsum(sizes[L])[:-1]])
        flat = torch.from_numpy(h + offs[None, :])
        table = t[f"model.layers.{L}.engram.multi_head_embedding.embedding.weight"]
        out[L] = table[flat].reshape(1, len(ids), -1)                  # [1, T, C*hd]
    return out


@torch.no_grad()
def forward(model, ids, t, sizes, eps, device, with_engram=True):
    hooks = []
    if with_engram:
        rows = engram_rows(t, sizes, ids[0].tolist())
        for L in ENGRAM["engram_layer_ids"]:
            wkv = t[f"model.layers.{L}.engram.wkv.weight"].to(device)
            xn = t[f"model.layers.{L}.engram.x_norm.weight"].to(device)
            kn = t[f"model.layers.{L}.engram.k_norm.weight"].to(device)
            e = rows[L].to(device)

            def pre(mod, args, kwargs, wkv=wkv, xn=xn, kn=kn, e=e):
                x = args[0]
                return (fuse(x, e, wkv, xn, kn, eps),) + tuple(args[1:]), kwargs

            hooks.append(model.model.layers[L].register_forward_pre_hook(pre, with_kwargs=True))
    try:
        out = model(input_ids=ids.to(device), use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return out.logits[0].float().cpu()


def write_dir(path, config, tensors, ids=None, logits=None):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f, indent=1, sort_keys=True)
    save_file({k: v.contiguous() for k, v in sorted(tensors.items())},
              os.path.join(path, "model.safetensors"))
    os.chmod(os.path.join(path, "model.safetensors"), 0o644)
    if ids is not None:
        with open(os.path.join(path, "tokens.json"), "w") as f:
            json.dump({"tokens": [int(x) for x in ids[0]]}, f)
    if logits is not None:
        np.ascontiguousarray(logits.numpy(), dtype="<f4").tofile(os.path.join(path, "logits.bin"))


def saved(model):
    """The model as save_pretrained writes it: (config.json as a dict, tensors)."""
    with tempfile.TemporaryDirectory() as tmp:
        model.to("cpu").save_pretrained(tmp, safe_serialization=True)
        with open(os.path.join(tmp, "config.json")) as f:
            config = json.load(f)
        tensors = load_file(os.path.join(tmp, "model.safetensors"))
    for k in ("architectures", "transformers_version"):
        config.pop(k, None)
    return config, tensors


def make_model(out, device):
    cfg, model, gen = parity.build_model(BASE)
    model = model.to(device)
    ids = torch.randint(0, cfg.vocab_size, (1, BASE["n_tokens"]), generator=gen)
    egen = torch.Generator().manual_seed(1234)
    t, sizes = engram_tensors(cfg, egen)
    eps = cfg.rms_norm_eps

    full = forward(model, ids, t, sizes, eps, device)
    base = forward(model, ids, t, sizes, eps, device, with_engram=False)
    config, base_t = saved(model)
    write_dir(os.path.join(out, "noengram"), config, base_t, ids, base)
    ecfg = dict(config, **ENGRAM)
    write_dir(os.path.join(out, "model"), ecfg, dict(base_t, **t), ids, full)
    zero = {k: (torch.zeros_like(v) if k.endswith("engram.wkv.weight") else v)
            for k, v in t.items() if "multi_head_embedding" not in k}
    write_dir(os.path.join(out, "zero"), ecfg, dict(base_t, **zero), ids)
    diff = float((full - base).abs().max())
    meta = {"device": str(device), "torch_version": torch.__version__,
            "transformers_version": parity.transformers.__version__,
            "n_tokens": BASE["n_tokens"], "vocab_size": cfg.vocab_size,
            "max_abs_logit": float(full.abs().max()),
            "engram_vs_noengram_max_abs_diff": diff,
            "table_sizes": {str(k): v for k, v in sizes.items()}}
    with open(os.path.join(out, "model", "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print(f"model: {BASE['n_tokens']} tokens, max|logit| {meta['max_abs_logit']:.4f}, "
          f"Engram moves the logits by up to {diff:.4f}; table sizes {sizes}")


def make_served(out, device):
    """model/'s shape with a byte-level vocabulary: the one the daemon can load."""
    base = dict(BASE, seed=11, model=dict(BASE["model"], vocab_size=320))
    cfg, model, gen = parity.build_model(base)
    model = model.to(device)
    ids = torch.randint(0, 256, (1, base["n_tokens"]), generator=gen)
    t, sizes = engram_tensors(cfg, torch.Generator().manual_seed(4321))
    full = forward(model, ids, t, sizes, cfg.rms_norm_eps, device)
    config, base_t = saved(model)
    write_dir(os.path.join(out, "served"), dict(config, **ENGRAM), dict(base_t, **t), ids, full)
    print(f"served: vocab {cfg.vocab_size}, max|logit| {float(full.abs().max()):.4f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--only", choices=["op", "model", "served"], action="append",
                    help="write only these parts (repeatable; default: all)")
    args = ap.parse_args()
    hashing.check_golden()  # the hashing transcription still matches the golden vectors
    os.makedirs(args.out, exist_ok=True)
    parts = args.only or ["op", "model", "served"]
    if "op" in parts:
        make_op(args.out, torch.device(args.device))
    if "model" in parts:
        make_model(args.out, torch.device(args.device))
    if "served" in parts:
        make_served(args.out, torch.device(args.device))
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(args.out) for f in fs)
    print(f"{total} bytes in {args.out}")


if __name__ == "__main__":
    main()
