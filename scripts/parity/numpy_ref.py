#!/usr/bin/env python3
"""Independent NumPy implementation of the DeepSeek-V4 forward pass (docs/v4-forward.md).

This file is the template for the plain-C CPU backend.  It does not import torch or
transformers: it reads config.json and model.safetensors itself, and keeps every piece
of incremental state explicit, per layer:

  * SlidingState     - the raw (roped) kv vectors of the last W-1 positions
  * CompressorState  - pending tokens of the unfinished window (kv and gate projections),
                       the CSA overlap (previous window's Ca values and biased gates),
                       and the list of emitted compressed entries (roped)
  * LayerState       - one SlidingState, plus a compressor (CSA/HCA) and, on CSA layers,
                       the indexer's own compressor producing the index keys

Usage:
  python3 scripts/parity/numpy_ref.py [--dtype float64|float32] [DIR ...]
with DIR defaulting to every tests/model/parity/*/.  For each it runs the prompt in one
call and in the chunk schedule of tokens.json (state carried between calls), and compares
with logits_full.bin / logits_chunked.bin.  Exit status 1 if any relative error
(max |diff| / max |logit|) exceeds --tol (default 1e-5).
"""

import argparse
import glob
import json
import math
import os
import re
import struct
import sys

import numpy as np

# =============================================================================================
# Loading: config.json (with the defaults transformers applies) and safetensors
# =============================================================================================

CONFIG_DEFAULTS = {
    "vocab_size": 129280,
    "hidden_size": 4096,
    "moe_intermediate_size": 2048,
    "num_hidden_layers": 43,
    "num_attention_heads": 64,
    "num_key_value_heads": 1,
    "head_dim": 512,
    "q_lora_rank": 1024,
    "num_experts_per_tok": 6,
    "n_routed_experts": 256,
    "n_shared_experts": 1,
    "scoring_func": "sqrtsoftplus",
    "norm_topk_prob": True,
    "routed_scaling_factor": 1.5,
    "max_position_embeddings": 1048576,
    "rope_theta": 10000.0,
    "compress_rope_theta": 160000.0,
    "hc_mult": 4,
    "hc_sinkhorn_iters": 20,
    "hc_eps": 1e-6,
    "swiglu_limit": 10.0,
    "sliding_window": 128,
    "o_groups": 8,
    "o_lora_rank": 1024,
    "index_n_heads": 64,
    "index_head_dim": 128,
    "index_topk": 512,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
    "hidden_act": "silu",
    "partial_rotary_factor": None,
    "layer_types": None,
    "mlp_layer_types": None,
    "compress_rates": None,
    "rope_parameters": None,
}


def load_config(path):
    with open(path) as f:
        raw = json.load(f)
    c = dict(CONFIG_DEFAULTS)
    c.update(raw)
    n = c["num_hidden_layers"]
    # legacy spellings
    if c["compress_rates"] is None:
        c["compress_rates"] = {"compressed_sparse_attention": 4, "heavily_compressed_attention": 128}
        if "compress_rate_csa" in raw:
            c["compress_rates"]["compressed_sparse_attention"] = raw["compress_rate_csa"]
        if "compress_rate_hca" in raw:
            c["compress_rates"]["heavily_compressed_attention"] = raw["compress_rate_hca"]
    if c["layer_types"] is None:
        if "compress_ratios" in raw:
            m = {0: "sliding_attention", 4: "compressed_sparse_attention", 128: "heavily_compressed_attention"}
            c["layer_types"] = [m[r] for r in raw["compress_ratios"]]
        else:
            c["layer_types"] = ["heavily_compressed_attention"] * min(n, 2) + [
                "compressed_sparse_attention" if i % 2 else "heavily_compressed_attention" for i in range(max(n - 2, 0))
            ]
    c["layer_types"] = c["layer_types"][:n]
    if c["mlp_layer_types"] is None:
        nh = raw.get("num_hash_layers", 3)
        c["mlp_layer_types"] = ["hash_moe"] * min(n, nh) + ["moe"] * max(0, n - nh)
    c["mlp_layer_types"] = c["mlp_layer_types"][:n]
    if c["partial_rotary_factor"] is None:
        c["partial_rotary_factor"] = raw["qk_rope_head_dim"] / c["head_dim"] if "qk_rope_head_dim" in raw else 64 / 512
    rp = c["rope_parameters"] or {}
    if isinstance(rp.get("main"), dict) and isinstance(rp.get("compress"), dict):
        main, comp = dict(rp["main"]), dict(rp["compress"])
    else:  # flat form: the scaling keys apply to the compress rope only
        main = {"rope_type": "default", "rope_theta": c["rope_theta"], "partial_rotary_factor": c["partial_rotary_factor"]}
        comp = {k: v for k, v in rp.items() if k not in ("main", "compress")}
        comp.update(rope_theta=c["compress_rope_theta"], partial_rotary_factor=c["partial_rotary_factor"])
        comp.setdefault("rope_type", "default")
        if comp["rope_type"] == "yarn":
            comp.setdefault("attention_factor", 1.0)
    for d, theta in ((main, c["rope_theta"]), (comp, c["compress_rope_theta"])):
        d.setdefault("rope_type", d.get("type", "default"))
        d.setdefault("rope_theta", theta)
        d.setdefault("partial_rotary_factor", c["partial_rotary_factor"])
        if d["rope_type"] == "yarn":
            d.setdefault("original_max_position_embeddings", c["max_position_embeddings"])
    c["rope_main"], c["rope_compress"] = main, comp
    return c


_ST_DTYPES = {"F32": "<f4", "F64": "<f8", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1", "U8": "u1"}


def read_safetensors(path):
    """safetensors = u64 little-endian header length N, N bytes of JSON header
    {name: {dtype, shape, data_offsets: [begin, end]}} (offsets relative to the end of the
    header), then the raw little-endian row-major tensor bytes."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        if info["dtype"] == "BF16":
            u = np.frombuffer(data[b:e], dtype="<u2").astype(np.uint32) << 16
            arr = u.view(np.float32)
        else:
            arr = np.frombuffer(data[b:e], dtype=_ST_DTYPES[info["dtype"]])
        out[name] = arr.reshape(info["shape"])
    return out


# Checkpoint key -> module key.  Files written by transformers' save_pretrained use the
# upstream DeepSeek leaf names under a "model." prefix (e.g. model.layers.0.attn.wq_a.weight,
# model.layers.0.ffn.experts.3.w1.weight, head.weight); the upstream release has no "model."
# prefix at all (embed.weight, layers.0..., norm.weight, hc_head_fn).  Both are mapped onto
# the module names of the reference (model.layers.0.self_attn.q_a_proj.weight, ...).
_RENAMES = [
    (r"\.attn\.", ".self_attn."),
    (r"\.ffn\.", ".mlp."),
    (r"\.indexer\.compressor\.", ".compressor.indexer."),
    (r"^embed\.weight$", "embed_tokens.weight"),
    (r"^hc_head_fn$", "hc_head.hc_fn"),
    (r"^hc_head_base$", "hc_head.hc_base"),
    (r"^hc_head_scale$", "hc_head.hc_scale"),
    (r"\.attn_norm\.", ".input_layernorm."),
    (r"\.ffn_norm\.", ".post_attention_layernorm."),
    (r"\.hc_attn_fn$", ".attn_hc.fn"),
    (r"\.hc_attn_base$", ".attn_hc.base"),
    (r"\.hc_attn_scale$", ".attn_hc.scale"),
    (r"\.hc_ffn_fn$", ".ffn_hc.fn"),
    (r"\.hc_ffn_base$", ".ffn_hc.base"),
    (r"\.hc_ffn_scale$", ".ffn_hc.scale"),
    (r"\.attn_sink$", ".sinks"),
    (r"\.self_attn\.indexer\.weights_proj\.", ".self_attn.compressor.indexer.scorer.weights_proj."),
    (r"\.self_attn\.indexer\.wq_b\.", ".self_attn.compressor.indexer.q_b_proj."),
    (r"\.norm\.", ".kv_norm."),
    (r"\.ape$", ".position_bias"),
    (r"\.wq_a\.", ".q_a_proj."),
    (r"\.self_attn\.wq_b\.", ".self_attn.q_b_proj."),
    (r"\.wkv\.", ".kv_proj."),
    (r"\.wgate\.", ".gate_proj."),
    (r"\.wo_a\.", ".o_a_proj."),
    (r"\.wo_b\.", ".o_b_proj."),
    (r"\.q_norm\.", ".q_a_norm."),
    (r"\.gate\.bias$", ".gate.e_score_correction_bias"),
    (r"\.shared_experts\.w1\.", ".shared_experts.gate_proj."),
    (r"\.shared_experts\.w2\.", ".shared_experts.down_proj."),
    (r"\.shared_experts\.w3\.", ".shared_experts.up_proj."),
]


def to_module_names(tensors):
    """Rename checkpoint tensors to module names and stack per-expert matrices:
    experts.E.w1 (gate, [I,D]) and experts.E.w3 (up, [I,D]) -> experts.gate_up_proj[E] = [w1; w3]
    ([n_experts, 2I, D]); experts.E.w2 ([D,I]) -> experts.down_proj[E] ([n_experts, D, I])."""
    out, experts = {}, {}
    for key, t in tensors.items():
        if key in ("head.weight", "lm_head.weight"):
            out["lm_head.weight"] = t
            continue
        k = key[len("model."):] if key.startswith("model.") else key
        for pat, rep in _RENAMES:
            k = re.sub(pat, rep, k)
        m = re.match(r"^(.*\.experts)\.(\d+)\.(w[123])\.weight$", k)
        if m:
            experts.setdefault(m.group(1), {}).setdefault(int(m.group(2)), {})[m.group(3)] = t
            continue
        out["model." + k] = t
    for prefix, per in experts.items():
        ids = sorted(per)
        assert ids == list(range(len(ids))), prefix
        out["model." + prefix + ".gate_up_proj"] = np.stack([np.concatenate([per[e]["w1"], per[e]["w3"]], 0) for e in ids])
        out["model." + prefix + ".down_proj"] = np.stack([per[e]["w2"] for e in ids])
    return out


# =============================================================================================
# Elementary ops
# =============================================================================================


def rms_norm(x, weight, eps):
    """x / sqrt(mean(x^2) + eps) over the last axis, times weight (None = unweighted)."""
    y = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)
    return y if weight is None else y * weight


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def silu(x):
    return x * sigmoid(x)


def softplus(x):  # torch: beta 1, linear above threshold 20
    return np.where(x > 20.0, x, np.log1p(np.exp(np.minimum(x, 20.0))))


def softmax(x, axis):
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


class Rope:
    """Interleaved partial RoPE on the trailing r = int(head_dim * partial_rotary_factor)
    channels of a vector.  Pair i (channels r0+2i, r0+2i+1, with r0 = len - r) rotates by
    angle pos * inv_freq[i].  inv_freq and the angle are formed in float32 as the reference
    does (the angle is the float32 product of two float32 numbers)."""

    def __init__(self, params, head_dim):
        self.r = int(head_dim * params["partial_rotary_factor"])
        r = self.r
        base = np.float32(params["rope_theta"])
        pos_freqs = (base ** (np.arange(0, r, 2, dtype=np.float32) / np.float32(r))).astype(np.float32)
        inv_extra = (np.float32(1.0) / pos_freqs).astype(np.float32)
        self.scale = 1.0
        if params["rope_type"] == "default":
            self.inv_freq = inv_extra
        elif params["rope_type"] == "yarn":
            factor = float(params["factor"])
            orig = params["original_max_position_embeddings"]
            beta_fast = params.get("beta_fast") or 32
            beta_slow = params.get("beta_slow") or 1
            af = params.get("attention_factor")
            if af is None:
                mscale, mscale_all = params.get("mscale"), params.get("mscale_all_dim")

                def gm(s, m=1.0):
                    return 1.0 if s <= 1 else 0.1 * m * math.log(s) + 1.0

                af = gm(factor, mscale) / gm(factor, mscale_all) if (mscale and mscale_all) else gm(factor)
            self.scale = float(af)

            def corr_dim(n_rot):
                return (r * math.log(orig / (n_rot * 2 * math.pi))) / (2 * math.log(float(params["rope_theta"])))

            # the reference always truncates (floor / ceil), whatever "truncate" says
            low = max(math.floor(corr_dim(beta_fast)), 0)
            high = min(math.ceil(corr_dim(beta_slow)), r - 1)
            if low == high:
                high += 0.001
            ramp = np.clip((np.arange(r // 2, dtype=np.float32) - np.float32(low)) / np.float32(high - low), 0, 1)
            ramp = ramp.astype(np.float32)
            inv_inter = (np.float32(1.0) / (np.float32(factor) * pos_freqs)).astype(np.float32)
            keep = (np.float32(1.0) - ramp).astype(np.float32)  # weight of the unscaled frequency
            self.inv_freq = (inv_inter * (np.float32(1.0) - keep) + inv_extra * keep).astype(np.float32)
        else:
            raise NotImplementedError(params["rope_type"])

    def cos_sin(self, pos):
        ang = (np.float32(pos) * self.inv_freq).astype(np.float32).astype(np.float64)
        return np.cos(ang) * self.scale, np.sin(ang) * self.scale

    def apply(self, x, pos, inverse=False):
        """x[..., n] roped at integer position pos (inverse: angle negated)."""
        c, s = self.cos_sin(pos)
        if inverse:
            s = -s
        y = x.copy()
        a = x[..., x.shape[-1] - self.r :: 2]
        b = x[..., x.shape[-1] - self.r + 1 :: 2]
        y[..., x.shape[-1] - self.r :: 2] = a * c - b * s
        y[..., x.shape[-1] - self.r + 1 :: 2] = b * c + a * s
        return y


# =============================================================================================
# Incremental state
# =============================================================================================


class SlidingState:
    def __init__(self, window, d):
        self.keep = window - 1
        self.kv = np.zeros((0, d))
        self.pos = np.zeros((0,), dtype=np.int64)


class CompressorState:
    def __init__(self, rate, width, overlap):
        self.m, self.c, self.overlap = rate, width, overlap
        w = 2 * width if overlap else width
        self.buf_kv = np.zeros((0, w))  # projections of tokens of the unfinished window
        self.buf_gate = np.zeros((0, w))  # raw gate projections (position bias not added yet)
        self.prev_ca_kv = None  # CSA only: Ca values [m, c] of the last closed window
        self.prev_ca_gate = None  # CSA only: Ca gates + position bias [m, c] of that window
        self.entries = []  # emitted entries, each [c], normed and roped at position w*m


class LayerState:
    def __init__(self, cfg, li):
        lt = cfg["layer_types"][li]
        self.kind = lt
        self.sliding = SlidingState(cfg["sliding_window"], cfg["head_dim"])
        self.comp = self.index = None
        if lt == "heavily_compressed_attention":
            self.comp = CompressorState(cfg["compress_rates"][lt], cfg["head_dim"], overlap=False)
        elif lt == "compressed_sparse_attention":
            m = cfg["compress_rates"][lt]
            self.comp = CompressorState(m, cfg["head_dim"], overlap=True)
            self.index = CompressorState(m, cfg["index_head_dim"], overlap=True)


class ModelState:
    def __init__(self, cfg):
        self.n_seen = 0
        self.layers = [LayerState(cfg, i) for i in range(cfg["num_hidden_layers"])]


# =============================================================================================
# The model
# =============================================================================================


class DeepseekV4:
    def __init__(self, model_dir, dtype=np.float64):
        self.cfg = cfg = load_config(os.path.join(model_dir, "config.json"))
        raw = read_safetensors(os.path.join(model_dir, "model.safetensors"))
        w = to_module_names(raw)
        self.w = {k: (v.astype(dtype) if v.dtype.kind == "f" else v.astype(np.int64)) for k, v in w.items()}
        self.dt = dtype
        self.rope = {
            "main": Rope(cfg["rope_main"], cfg["head_dim"]),
            "compress": Rope(cfg["rope_compress"], cfg["head_dim"]),
        }
        self.eps = cfg["rms_norm_eps"]

    def W(self, name):
        return self.w[name]

    def L(self, li, name):
        return self.w[f"model.layers.{li}.{name}"]

    # ---------------------------------------------------------------- mHC
    def hc_weights(self, X, fn, base, scale):
        """X [n, D] streams of one token -> pre [n], post [n], comb [n, n]."""
        n = self.cfg["hc_mult"]
        heps = self.cfg["hc_eps"]
        flat = rms_norm(X.reshape(-1), None, self.eps)  # stream-major n*D vector, unweighted
        mix = fn @ flat  # [(2+n)*n]
        pre = sigmoid(mix[:n] * scale[0] + base[:n]) + heps
        post = 2.0 * sigmoid(mix[n : 2 * n] * scale[1] + base[n : 2 * n])
        logits = mix[2 * n :].reshape(n, n) * scale[2] + base[2 * n :].reshape(n, n)
        comb = softmax(logits, axis=1) + heps  # softmax along each row j (over k)
        comb = comb / (comb.sum(axis=0, keepdims=True) + heps)  # columns
        for _ in range(self.cfg["hc_sinkhorn_iters"] - 1):
            comb = comb / (comb.sum(axis=1, keepdims=True) + heps)  # rows
            comb = comb / (comb.sum(axis=0, keepdims=True) + heps)  # columns
        return pre, post, comb

    def hc_site(self, X, prefix, li, sublayer):
        """One mHC-wrapped site for all tokens of the chunk.  X [S, n, D]."""
        fn, base, scale = (self.L(li, f"{prefix}.{p}") for p in ("fn", "base", "scale"))
        S = X.shape[0]
        pres, posts, combs = zip(*(self.hc_weights(X[s], fn, base, scale) for s in range(S)))
        pre, post, comb = np.stack(pres), np.stack(posts), np.stack(combs)
        collapsed = np.einsum("sn,snd->sd", pre, X)
        o = sublayer(collapsed)  # [S, D]
        # new stream k = post[k] * o + sum_j comb[j, k] * X[j]
        return post[:, :, None] * o[:, None, :] + np.einsum("sjk,sjd->skd", comb, X)

    def hc_head(self, X):
        fn, base, scale = self.W("model.hc_head.hc_fn"), self.W("model.hc_head.hc_base"), self.W("model.hc_head.hc_scale")
        out = []
        for s in range(X.shape[0]):
            flat = rms_norm(X[s].reshape(-1), None, self.eps)
            pre = sigmoid((fn @ flat) * scale[0] + base) + self.cfg["hc_eps"]
            out.append(pre @ X[s])
        return np.stack(out)

    # ---------------------------------------------------------------- compressors
    def compressor_feed(self, st, a, kv_w, gate_w, pbias, norm_w, rope):
        """Feed the attention inputs a [S, D] of the call's tokens (consecutive positions) into
        compressor state st; emit one entry for every window that closes, in order."""
        st.buf_kv = np.concatenate([st.buf_kv, a @ kv_w.T])
        st.buf_gate = np.concatenate([st.buf_gate, a @ gate_w.T])
        m, c = st.m, st.c
        while st.buf_kv.shape[0] >= m:
            kv, g = st.buf_kv[:m], st.buf_gate[:m] + pbias  # row j <-> position w*m + j
            st.buf_kv, st.buf_gate = st.buf_kv[m:], st.buf_gate[m:]
            w = len(st.entries)
            if not st.overlap:  # HCA: softmax over the m tokens of the window, per channel
                pooled = np.sum(softmax(g, axis=0) * kv, axis=0)
            else:  # CSA: slots = Ca of window w-1 (if any) then Cb of window w
                slot_kv, slot_g = kv[:, c:], g[:, c:]
                if st.prev_ca_kv is not None:
                    slot_kv = np.concatenate([st.prev_ca_kv, slot_kv])
                    slot_g = np.concatenate([st.prev_ca_gate, slot_g])
                pooled = np.sum(softmax(slot_g, axis=0) * slot_kv, axis=0)
                st.prev_ca_kv, st.prev_ca_gate = kv[:, :c].copy(), g[:, :c].copy()
            entry = rope.apply(rms_norm(pooled, norm_w, self.eps), w * m)
            st.entries.append(entry)

    # ---------------------------------------------------------------- indexer
    def indexer_select(self, li, st, qr_t, a_t, pos):
        """Indices of the compressed entries query `pos` attends to on a CSA layer."""
        cfg = self.cfg
        n_valid = min(len(st.entries), (pos + 1) // st.m)
        if n_valid == 0:
            return []
        nh, c = cfg["index_n_heads"], cfg["index_head_dim"]
        p = "self_attn.compressor.indexer."
        q = (self.L(li, p + "q_b_proj.weight") @ qr_t).reshape(nh, c)
        q = self.rope["compress"].apply(q, pos)
        hw = (self.L(li, p + "scorer.weights_proj.weight") @ a_t) * nh**-0.5  # [nh]
        K = np.stack(st.entries[:n_valid])  # [n_valid, c]
        scores = (np.maximum(q @ K.T, 0.0) * c**-0.5 * hw[:, None]).sum(axis=0)  # [n_valid]
        k = min(cfg["index_topk"], n_valid)
        order = np.argsort(-scores, kind="stable")  # ties: lowest index first (reference: unspecified)
        return sorted(order[:k].tolist())

    # ---------------------------------------------------------------- attention
    def attention(self, li, x, positions, st):
        cfg = self.cfg
        H, d = cfg["num_attention_heads"], cfg["head_dim"]
        S = x.shape[0]
        rope = self.rope["main" if st.kind == "sliding_attention" else "compress"]
        a = rms_norm(x, self.L(li, "input_layernorm.weight"), self.eps)  # attention input
        qr = rms_norm(a @ self.L(li, "self_attn.q_a_proj.weight").T, self.L(li, "self_attn.q_a_norm.weight"), self.eps)
        q = (qr @ self.L(li, "self_attn.q_b_proj.weight").T).reshape(S, H, d)
        q = rms_norm(q, None, self.eps)  # per head, unweighted
        kv = rms_norm(a @ self.L(li, "self_attn.kv_proj.weight").T, self.L(li, "self_attn.kv_norm.weight"), self.eps)
        q = np.stack([rope.apply(q[i], positions[i]) for i in range(S)])
        kv = np.stack([rope.apply(kv[i], positions[i]) for i in range(S)])

        raw_kv = np.concatenate([st.sliding.kv, kv])
        raw_pos = np.concatenate([st.sliding.pos, positions])

        if st.comp is not None:
            p = "self_attn.compressor."
            self.compressor_feed(
                st.comp, a,
                self.L(li, p + "kv_proj.weight"), self.L(li, p + "gate_proj.weight"),
                self.L(li, p + "position_bias"), self.L(li, p + "kv_norm.weight"), rope,
            )
        if st.index is not None:
            p = "self_attn.compressor.indexer."
            self.compressor_feed(
                st.index, a,
                self.L(li, p + "kv_proj.weight"), self.L(li, p + "gate_proj.weight"),
                self.L(li, p + "position_bias"), self.L(li, p + "kv_norm.weight"), self.rope["compress"],
            )

        sinks = self.L(li, "self_attn.sinks")
        W = cfg["sliding_window"]
        out = np.zeros((S, H, d))
        for i in range(S):
            t = positions[i]
            keys = [raw_kv[(raw_pos > t - W) & (raw_pos <= t)]]
            if st.kind == "heavily_compressed_attention":
                n_valid = min(len(st.comp.entries), (t + 1) // st.comp.m)
                if n_valid:
                    keys.append(np.stack(st.comp.entries[:n_valid]))
            elif st.kind == "compressed_sparse_attention":
                sel = self.indexer_select(li, st.index, qr[i], a[i], t)
                if sel:
                    keys.append(np.stack([st.comp.entries[j] for j in sel]))
            K = np.concatenate(keys)  # [n_keys, d]; keys are also the values
            logits = (q[i] @ K.T) * d**-0.5  # [H, n_keys]
            mx = np.maximum(logits.max(axis=1), sinks)  # sink joins the softmax ...
            e = np.exp(logits - mx[:, None])
            p = e / (e.sum(axis=1) + np.exp(sinks - mx))[:, None]  # ... and is dropped
            out[i] = rope.apply(p @ K, t, inverse=True)

        st.sliding.kv, st.sliding.pos = raw_kv[-st.sliding.keep :], raw_pos[-st.sliding.keep :]

        # grouped output projection
        g, R = cfg["o_groups"], cfg["o_lora_rank"]
        wa = self.L(li, "self_attn.o_a_proj.weight").reshape(g, R, H * d // g)
        grouped = out.reshape(S, g, H * d // g)
        z = np.einsum("sgi,gri->sgr", grouped, wa).reshape(S, g * R)
        return z @ self.L(li, "self_attn.o_b_proj.weight").T

    # ---------------------------------------------------------------- MoE
    def swiglu(self, gate, up):
        lim = self.cfg["swiglu_limit"]
        return silu(np.minimum(gate, lim)) * np.clip(up, -lim, lim)

    def moe(self, li, x, token_ids):
        cfg = self.cfg
        b = rms_norm(x, self.L(li, "post_attention_layernorm.weight"), self.eps)
        I = cfg["moe_intermediate_size"]
        k = cfg["num_experts_per_tok"]
        logits = b @ self.L(li, "mlp.gate.weight").T  # [S, E]
        f = cfg["scoring_func"]
        if f == "sqrtsoftplus":
            scores = np.sqrt(softplus(logits))
        elif f == "sigmoid":
            scores = sigmoid(logits)
        else:
            raise NotImplementedError(f"scoring_func {f} (the reference only knows sqrtsoftplus / sigmoid)")
        gu, dn = self.L(li, "mlp.experts.gate_up_proj"), self.L(li, "mlp.experts.down_proj")
        y = np.zeros_like(b)
        for s in range(b.shape[0]):
            if cfg["mlp_layer_types"][li] == "hash_moe":
                idx = self.L(li, "mlp.gate.tid2eid")[token_ids[s]]
            else:
                biased = scores[s] + self.L(li, "mlp.gate.e_score_correction_bias")
                idx = np.argsort(-biased, kind="stable")[:k]
            wts = scores[s, idx]
            wts = wts / (wts.sum() + 1e-20) * cfg["routed_scaling_factor"]
            for e, wt in zip(idx, wts):
                h = gu[e] @ b[s]
                y[s] += wt * (dn[e] @ self.swiglu(h[:I], h[I:]))
        shared = self.swiglu(b @ self.L(li, "mlp.shared_experts.gate_proj.weight").T,
                             b @ self.L(li, "mlp.shared_experts.up_proj.weight").T)
        return y + shared @ self.L(li, "mlp.shared_experts.down_proj.weight").T

    # ---------------------------------------------------------------- whole model
    def forward(self, token_ids, state):
        """Run one call (a chunk of consecutive tokens) and return its logits [S, vocab]."""
        cfg = self.cfg
        token_ids = np.asarray(token_ids, dtype=np.int64)
        S = len(token_ids)
        positions = np.arange(state.n_seen, state.n_seen + S)
        e = self.W("model.embed_tokens.weight")[token_ids]  # [S, D]
        X = np.repeat(e[:, None, :], cfg["hc_mult"], axis=1)  # [S, n, D]
        for li in range(cfg["num_hidden_layers"]):
            X = self.hc_site(X, "attn_hc", li, lambda x: self.attention(li, x, positions, state.layers[li]))
            X = self.hc_site(X, "ffn_hc", li, lambda x: self.moe(li, x, token_ids))
        h = rms_norm(self.hc_head(X), self.W("model.norm.weight"), self.eps)
        state.n_seen += S
        return h @ self.W("lm_head.weight").T


# =============================================================================================
# Driver
# =============================================================================================


def check_dir(d, dtype, tol):
    model = DeepseekV4(d, dtype)
    with open(os.path.join(d, "tokens.json")) as f:
        tk = json.load(f)
    toks, chunks = tk["tokens"], tk["chunks"]
    V = model.cfg["vocab_size"]
    ref_full = np.fromfile(os.path.join(d, "logits_full.bin"), "<f4").reshape(len(toks), V).astype(np.float64)
    ref_chunk = np.fromfile(os.path.join(d, "logits_chunked.bin"), "<f4").reshape(len(toks), V).astype(np.float64)
    scale = np.abs(ref_full).max()

    full = model.forward(toks, ModelState(model.cfg))
    st, outs, p = ModelState(model.cfg), [], 0
    for n in chunks:
        outs.append(model.forward(toks[p : p + n], st))
        p += n
    chunked = np.concatenate(outs)
    st, steps = ModelState(model.cfg), []
    for t in toks:  # every token in its own call
        steps.append(model.forward([t], st))
    steps = np.concatenate(steps)

    res = {
        "one_call_vs_logits_full": np.abs(full - ref_full).max() / scale,
        "chunked_vs_logits_chunked": np.abs(chunked - ref_chunk).max() / scale,
        "token_by_token_vs_logits_full": np.abs(steps - ref_full).max() / scale,
    }
    ok = all(v <= tol for v in res.values())
    print(f"{os.path.basename(d.rstrip('/'))} [{np.dtype(dtype).name}]: "
          + ", ".join(f"{k} {v:.2e}" for k, v in res.items()) + ("  OK" if ok else "  FAIL"))
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dirs", nargs="*")
    ap.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    ap.add_argument("--tol", type=float, default=1e-5, help="max relative error (default 1e-5)")
    args = ap.parse_args()
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "model", "parity")
    dirs = args.dirs or sorted(glob.glob(os.path.join(root, "*", "")))
    ok = all([check_dir(d, np.dtype(args.dtype).type, args.tol) for d in dirs])
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
