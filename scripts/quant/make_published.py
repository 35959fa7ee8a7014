#!/usr/bin/env python3
"""Write small random DeepSeek-V4 checkpoints in EXACTLY the published format, with golden logits.

The published checkpoints (shared/V4-REAL.md sections 1-3) differ from what save_pretrained
writes: upstream names (no "model." prefix), FP8 e4m3 block weights with e8m0 scales per 128 x 128
block, routed experts as FP4 e2m1 (two codes an I8 byte, low nibble first, e8m0 scale per 32 along
K) or, in Base checkpoints, FP8 with F32 power-of-two scales; BF16 embed/head/norms/compressors,
F32 mHC tensors, sinks, position biases and router bias, I64 tid2eid; an MTP block "mtp.0.*";
several shards and model.safetensors.index.json; a config.json with compress_ratios (one entry
more than layers), num_hash_layers, quantization_config, flat YaRN rope_scaling.

For each variant this script
  1. builds a tiny random fp32 DeepseekV4ForCausalLM (scripts/parity/make_parity.py's
     randomisation; every dimension an FP8 weight has is a multiple of 128),
  2. takes its save_pretrained tensors, renames them to the release's names and quantizes them as
     DeepSeek's tools do (block scale = the power of two at or above amax / 448 for FP8, amax / 6
     for FP4; codes rounded to nearest even), adds a random MTP block, and writes two shards, the
     index and the release-style config.json to tests/model/published/<variant>/,
  3. loads THAT directory with transformers' from_pretrained on the CPU (its fine-grained FP8
     dequantize path), checks the dequantized weights equal ours bit for bit, and writes its
     logits: one call (logits_full.bin) and the chunk schedule of tokens.json
     (logits_chunked.bin), float32 [n][V], plus meta.json — the layout of tests/model/parity.

Needs torch, transformers 5.17 and accelerate (a venv outside the tree; the C build never does).
Usage:  python3 scripts/quant/make_published.py [--out DIR] [--only VARIANT]
"""

import argparse
import json
import math
import os
import re
import struct
import sys
import tempfile

import numpy as np
import torch
import transformers
from safetensors import safe_open
from transformers import DeepseekV4ForCausalLM

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(REPO, "scripts", "parity"))
import make_parity  # noqa: E402  (randomisation and the reference runs)

DEFAULT_OUT = os.path.join(REPO, "tests", "model", "published")

# transformers kwargs of the tiny model. Layers: sliding + hash, CSA + top-k, HCA + top-k (every
# attention and MoE kind, in the release's order), then the MTP block. FP8 weights have both dims multiples of 128: D = Q = I = 128,
# H * d = 256, g * R = 256, nI * c = 512.
MODEL = {
    "vocab_size": 256,
    "hidden_size": 128,
    "moe_intermediate_size": 128,
    "num_hidden_layers": 3,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 128,
    "q_lora_rank": 128,
    "partial_rotary_factor": 0.25,  # rope dim 32
    "num_experts_per_tok": 2,
    "n_routed_experts": 3,
    "n_shared_experts": 1,
    "scoring_func": "sqrtsoftplus",
    "routed_scaling_factor": 1.5,
    "rope_theta": 10000.0,
    "compress_rope_theta": 160000.0,
    "rope_parameters": {
        "rope_type": "yarn",
        "factor": 16.0,
        "original_max_position_embeddings": 65536,
        "beta_fast": 32,
        "beta_slow": 1,
    },
    "max_position_embeddings": 1048576,
    "layer_types": [
        "sliding_attention",
        "compressed_sparse_attention",
        "heavily_compressed_attention",
    ],
    "mlp_layer_types": ["hash_moe", "moe", "moe"],
    "compress_rates": {"compressed_sparse_attention": 4, "heavily_compressed_attention": 128},
    "hc_mult": 2,  # 4 in the release; 2 keeps the F32 mHC tensors small
    "hc_sinkhorn_iters": 20,
    "hc_eps": 1e-6,
    "rms_norm_eps": 1e-6,
    "swiglu_limit": 10.0,
    "sliding_window": 32,
    "o_groups": 2,
    "o_lora_rank": 128,
    "index_n_heads": 16,
    "index_head_dim": 32,
    "index_topk": 8,
    "tie_word_embeddings": False,
}

# The release-style config.json for MODEL (what transformers reads back).
def published_config(fp4):
    c = {
        "architectures": ["DeepseekV4ForCausalLM"],
        "model_type": "deepseek_v4",
        "torch_dtype": "bfloat16",
        "bos_token_id": 0,
        "eos_token_id": 1,
        "compress_ratios": [0, 4, 128, 0],
        "num_hash_layers": 1,
        "num_nextn_predict_layers": 1,
        "rope_scaling": dict(MODEL["rope_parameters"], type="yarn"),
        "quantization_config": {
            "quant_method": "fp8",
            "fmt": "e4m3",
            "scale_fmt": "ue8m0",
            "weight_block_size": [128, 128],
            "activation_scheme": "dynamic",
        },
    }
    del c["rope_scaling"]["rope_type"]
    for k, v in MODEL.items():
        if k not in ("layer_types", "mlp_layer_types", "compress_rates", "rope_parameters"):
            c[k] = v
    if fp4:
        c["expert_dtype"] = "fp4"  # transformers needs it; dualpath reads the tensors' dtype
    return c


VARIANTS = {
    # V4-Flash-like: FP4 routed experts, e8m0 scales everywhere
    "instruct": {"seed": int(os.environ.get("SEED_I", 8)), "fp4": True, "f32_scales": False},
    # V4-*-Base-like: FP8 routed experts, every scale F32 (powers of two)
    "base": {"seed": int(os.environ.get("SEED_B", 7)), "fp4": False, "f32_scales": True},
}
N_TOKENS = 140  # past the HCA rate (128), so the HCA layer emits an entry
CHUNKS = [61, 67]  # then single tokens

FP8_LEAVES = ("attn.wq_a", "attn.wq_b", "attn.wkv", "attn.wo_a", "attn.wo_b", "attn.indexer.wq_b",
              "ffn.shared_experts.w1", "ffn.shared_experts.w2", "ffn.shared_experts.w3", "e_proj", "h_proj")
E2M1 = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0], dtype=np.float64)


# ---------------------------------------------------------------------------------------------
# Quantization (the inverse of V4-REAL.md section 3)
# ---------------------------------------------------------------------------------------------
def pow2_ceil(x):
    """Elementwise power of two at or above x (x > 0), as an int exponent."""
    e = np.ceil(np.log2(x)).astype(np.int64)
    e = np.where(np.exp2(e - 1) >= x, e - 1, e)  # guard log2 rounding
    e = np.where(np.exp2(e) < x, e + 1, e)
    return e


def quant_fp8(w):
    """w [out, in] float32 -> (e4m3 codes uint8 [out, in], exponents int [out/128, in/128])."""
    r, c = w.shape
    assert r % 128 == 0 and c % 128 == 0, w.shape
    blocks = w.reshape(r // 128, 128, c // 128, 128)
    amax = np.maximum(np.abs(blocks).max(axis=(1, 3)), 1e-4)
    e = pow2_ceil(amax.astype(np.float64) / 448.0)
    s = np.exp2(e).astype(np.float32)
    q = blocks / s[:, None, :, None]
    codes = torch.from_numpy(np.ascontiguousarray(q.reshape(r, c), dtype=np.float32)).to(torch.float8_e4m3fn)
    codes = codes.view(torch.uint8).numpy()
    assert not np.any((codes & 0x7F) == 0x7F)
    return codes, e


def quant_fp4(w):
    """w [out, in] -> (packed uint8 [out, in/2], exponents int [out, in/32])."""
    r, c = w.shape
    g = w.reshape(r, c // 32, 32).astype(np.float64)
    amax = np.maximum(np.abs(g).max(axis=2), 6.0 * 2.0**-126)
    e = pow2_ceil(amax / 6.0)
    x = g / np.exp2(e)[:, :, None]
    a = np.abs(x)
    # nearest magnitude, ties to the even code
    d = np.abs(a[..., None] - E2M1)
    best = d.min(axis=-1, keepdims=True)
    cand = d == best
    idx = np.where(cand[..., 0::2].any(axis=-1), np.argmax(cand & (np.arange(8) % 2 == 0), axis=-1),
                   np.argmax(cand, axis=-1))
    code = (idx | np.where(np.signbit(x), 8, 0)).astype(np.uint8).reshape(r, c)
    packed = (code[:, 0::2] & 15) | (code[:, 1::2] << 4)
    return packed.astype(np.uint8), e


def dequant_fp8(codes, e):
    r, c = codes.shape
    v = torch.from_numpy(codes).view(torch.float8_e4m3fn).to(torch.float32).numpy()
    s = np.exp2(e).astype(np.float32)
    return (v.reshape(r // 128, 128, c // 128, 128) * s[:, None, :, None]).reshape(r, c)


def dequant_fp4(packed, e):
    lut = np.concatenate([E2M1, -E2M1]).astype(np.float32)
    lo, hi = lut[packed & 15], lut[packed >> 4]
    v = np.stack([lo, hi], axis=-1).reshape(packed.shape[0], -1)
    return (v.reshape(v.shape[0], -1, 32) * np.exp2(e).astype(np.float32)[:, :, None]).reshape(v.shape)


# ---------------------------------------------------------------------------------------------
# The release's tensors
# ---------------------------------------------------------------------------------------------
GLOBALS = {
    "model.embed_tokens.weight": "embed.weight",
    "model.norm.weight": "norm.weight",
    "model.hc_head.hc_fn": "hc_head_fn",
    "model.hc_head.hc_base": "hc_head_base",
    "model.hc_head.hc_scale": "hc_head_scale",
}


def upstream(name):
    if name in GLOBALS:
        return GLOBALS[name]
    name = name[6:] if name.startswith("model.") else name
    # transformers saves the attention's kv norm as attn.norm; the release spells it attn.kv_norm
    # (the compressors' norms stay .norm)
    return re.sub(r"^((?:layers|mtp)\.\d+\.attn)\.norm\.weight$", r"\1.kv_norm.weight", name)


def is_fp8_leaf(name):
    return any(name.endswith("." + leaf + ".weight") or name.startswith(leaf + ".") for leaf in FP8_LEAVES)


def to_bf16_bytes(a):
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(torch.bfloat16).view(torch.int16).numpy()


def release_tensors(plain, var):
    """plain: upstream name -> float32 / int64 array. Returns name -> (dtype, shape, bytes) and the
    dequantized values of every quantized weight (name -> float32)."""
    out, deq = {}, {}

    def scale(name, e):
        if var["f32_scales"]:
            out[name] = ("F32", e.shape, np.exp2(e).astype("<f4").tobytes())
        else:
            assert e.min() >= -127 and e.max() <= 127
            out[name] = ("F8_E8M0", e.shape, (e + 127).astype(np.uint8).tobytes())

    for name, a in plain.items():
        base = name[: -len(".weight")] if name.endswith(".weight") else None
        expert = ".ffn.experts." in name
        if expert and var["fp4"]:
            packed, e = quant_fp4(a)
            out[name] = ("I8", packed.shape, packed.tobytes())
            assert not var["f32_scales"]
            scale(base + ".scale", e)
            deq[name] = dequant_fp4(packed, e)
        elif expert or is_fp8_leaf(name):
            codes, e = quant_fp8(a)
            out[name] = ("F8_E4M3", codes.shape, codes.tobytes())
            scale(base + ".scale", e)
            deq[name] = dequant_fp8(codes, e)
        elif name.endswith("tid2eid"):
            out[name] = ("I64", a.shape, a.astype("<i8").tobytes())
        elif name.endswith(".weight"):  # embed, head, norms, compressors, indexer, router
            out[name] = ("BF16", a.shape, to_bf16_bytes(a).tobytes())
        else:  # hc_*, attn_sink, ape, gate.bias
            out[name] = ("F32", a.shape, a.astype("<f4").tobytes())
    return out, deq


def mtp_block(plain, gen, cfg):
    """A random MTP block in the release's names: a sliding, top-k-MoE block plus its extras."""
    D, n, E = cfg.hidden_size, cfg.hc_mult, cfg.n_routed_experts
    mtp = {}
    for name, a in plain.items():
        if name.startswith("layers.0.") and not name.endswith("tid2eid"):
            mtp["mtp.0." + name[len("layers.0."):]] = a
    mtp["mtp.0.ffn.gate.bias"] = make_parity._normal(gen, (E,), 0.25).numpy()
    for leaf in ("e_proj", "h_proj"):
        mtp[f"mtp.0.{leaf}.weight"] = make_parity._normal(gen, (D, D), 1 / math.sqrt(D)).numpy()
    for leaf in ("enorm", "hnorm", "norm"):
        mtp[f"mtp.0.{leaf}.weight"] = make_parity._uniform(gen, (D,), 0.6, 1.4).numpy()
    mtp["mtp.0.hc_head_fn"] = make_parity._normal(gen, (n, n * D), 1 / math.sqrt(n * D)).numpy()
    mtp["mtp.0.hc_head_base"] = make_parity._normal(gen, (n,), 0.5).numpy()
    mtp["mtp.0.hc_head_scale"] = make_parity._uniform(gen, (1,), 0.5, 1.5).numpy()
    return mtp


def write_safetensors(path, tensors):
    header, off = {}, 0
    names = sorted(tensors)
    for k in names:
        dt, shape, data = tensors[k]
        header[k] = {"dtype": dt, "shape": [int(x) for x in shape], "data_offsets": [off, off + len(data)]}
        off += len(data)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for k in names:
            f.write(tensors[k][2])


def write_checkpoint(odir, tensors):
    """Two shards: embed and the first half of the layers, then the rest (head, MTP)."""
    shards = {"model-00001-of-00002.safetensors": {}, "model-00002-of-00002.safetensors": {}}
    for k, v in tensors.items():
        first = k == "embed.weight" or k.startswith("layers.0.") or k.startswith("layers.1.")
        shards["model-0000%d-of-00002.safetensors" % (1 if first else 2)][k] = v
    wmap = {}
    for fname, ts in shards.items():
        write_safetensors(os.path.join(odir, fname), ts)
        wmap.update({k: fname for k in ts})
    total = sum(len(v[2]) for v in tensors.values())
    with open(os.path.join(odir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": dict(sorted(wmap.items()))}, f, indent=1)


# ---------------------------------------------------------------------------------------------
def generate(name, var, out_root):
    spec = {"seed": var["seed"], "model": MODEL}
    cfg, model, gen = make_parity.build_model(spec)
    ids = torch.randint(0, cfg.vocab_size, (1, N_TOKENS), generator=gen)
    sched = make_parity.chunk_schedule(N_TOKENS, CHUNKS)

    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        plain = {}
        with safe_open(os.path.join(tmp, "model.safetensors"), "pt") as f:
            for k in f.keys():
                t = f.get_tensor(k)
                plain[upstream(k)] = t.numpy() if t.dtype == torch.int64 else t.float().numpy()
    plain.update(mtp_block(plain, gen, cfg))
    tensors, deq = release_tensors(plain, var)

    odir = os.path.join(out_root, name)
    os.makedirs(odir, exist_ok=True)
    for f in os.listdir(odir):
        os.remove(os.path.join(odir, f))
    write_checkpoint(odir, tensors)
    with open(os.path.join(odir, "config.json"), "w") as f:
        json.dump(published_config(var["fp4"]), f, indent=1)

    # the reference: transformers reads the published directory on the CPU
    ref = DeepseekV4ForCausalLM.from_pretrained(
        odir, dtype=torch.float32, attn_implementation="eager", experts_implementation="eager"
    )
    ref = ref.float().eval()  # its FP8 path leaves some modules bf16; no value changes
    assert list(ref.config.layer_types) == MODEL["layer_types"], ref.config.layer_types
    assert list(ref.config.mlp_layer_types) == MODEL["mlp_layer_types"], ref.config.mlp_layer_types
    sd = ref.state_dict()
    q0 = sd["model.layers.1.self_attn.q_a_proj.weight"].numpy()
    assert np.array_equal(q0, deq["layers.1.attn.wq_a.weight"]), "FP8 dequantization differs"
    for l, e in ((0, 0), (2, 1)):
        gu = sd[f"model.layers.{l}.mlp.experts.gate_up_proj"].numpy()
        dn = sd[f"model.layers.{l}.mlp.experts.down_proj"].numpy()
        I = cfg.moe_intermediate_size
        assert np.array_equal(gu[e, :I], deq[f"layers.{l}.ffn.experts.{e}.w1.weight"]), "expert dequant"
        assert np.array_equal(gu[e, I:], deq[f"layers.{l}.ffn.experts.{e}.w3.weight"]), "expert dequant"
        assert np.array_equal(dn[e], deq[f"layers.{l}.ffn.experts.{e}.w2.weight"]), "expert dequant"

    full = make_parity.run_full(ref, ids, "cpu")
    chunked = make_parity.run_chunked(ref, ids, sched, "cpu")
    margins = make_parity.selection_margins(ref, ids, "cpu")
    max_abs = float(full.abs().max())
    per_pos = (full - chunked).abs().max(dim=1).values
    tol = 1e-4 * max_abs
    flips = [int(i) for i in torch.nonzero(per_pos > tol).flatten()]

    with open(os.path.join(odir, "tokens.json"), "w") as f:
        json.dump({"tokens": [int(x) for x in ids[0]], "n_tokens": N_TOKENS, "chunks": sched,
                   "note": "logits_chunked.bin concatenates the logits of these calls in order, "
                           "each call reusing the cache of the previous ones"}, f, indent=1)
    make_parity.write_f32(os.path.join(odir, "logits_full.bin"), full.numpy())
    make_parity.write_f32(os.path.join(odir, "logits_chunked.bin"), chunked.numpy())
    counts = {}
    for dt, _, data in tensors.values():
        counts.setdefault(dt, [0, 0])
        counts[dt][0] += 1
        counts[dt][1] += len(data)
    meta = {
        "variant": name,
        "experts": "fp4" if var["fp4"] else "fp8",
        "scales": "F32" if var["f32_scales"] else "F8_E8M0",
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "device": "cpu",
        "dtype": "float32 (from_pretrained dtype=float32, then .float())",
        "seed": var["seed"],
        "n_tokens": N_TOKENS,
        "vocab_size": cfg.vocab_size,
        "logits_layout": "little-endian float32, row-major [n_tokens][vocab_size]",
        "max_abs_logit": max_abs,
        "full_vs_chunked_max_abs_diff": float(per_pos.max()),
        "flip_tolerance": tol,
        "flip_positions": flips,
        "selection_margins": margins,
        "tensors_by_dtype": {k: {"count": v[0], "bytes": v[1]} for k, v in sorted(counts.items())},
    }
    with open(os.path.join(odir, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    size = sum(os.path.getsize(os.path.join(odir, f)) for f in os.listdir(odir))
    print(f"{name}: max|logit| {max_abs:.4f}, full-vs-chunked {float(per_pos.max()):.3e}, flips {flips}, "
          f"{len(tensors)} tensors, {size} bytes in {odir}")
    print(f"  selection margins: {margins}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--only", action="append")
    args = ap.parse_args()
    torch.use_deterministic_algorithms(True, warn_only=True)
    for name in args.only or list(VARIANTS):
        if name not in VARIANTS:
            sys.exit(f"unknown variant {name}; known: {list(VARIANTS)}")
        generate(name, VARIANTS[name], args.out)


if __name__ == "__main__":
    main()
