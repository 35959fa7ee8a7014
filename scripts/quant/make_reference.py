#!/usr/bin/env python3
"""DeepSeek's reference numerics for DeepSeek-V4, in NumPy, on the published-format fixtures.

A port of the numerics of DeepSeek's own inference graph (DeepSeek-V4-Flash inference/model.py
and kernel.py, read through the search tool; nothing pasted), on top of the independent NumPy
forward of scripts/parity/numpy_ref.py (same structure, explicit state):

  * linear(): a weight stored as FP8 (e4m3, 128x128 e8m0 blocks) or FP4 (e2m1, e8m0 per 32) is
    multiplied by an activation first rounded through e4m3 per 128 values (act_quant: amax
    floored at 1e-4, scale = 2^ceil(log2(amax * fp32(1/448))) taken from the bits as
    fast_round_scale does, q = e4m3(clamp(x / scale, +-448)), round to nearest even); each
    weight K block (128 fp8, 32 fp4) is summed on its own and added to an fp32 accumulator
    times the scales (fp8_gemm: partial * (sa * sw); fp4_gemm: partial * sa * sw).  The block
    sums are exact here (products of e4m3 / e2m1 values sum exactly in float64) and rounded to
    fp32 once; blocks are added in K order.  BF16 weights (router, compressors, indexer
    weights_proj, head) are plain float products; wo_a is bf16 in the reference (convert.py
    dequantizes it), i.e. its exactly dequantized weight.
  * KV: after kv_norm and RoPE, the non-RoPE dims of the window kv and of every compressed
    entry go through e4m3 per 64 (act_quant(kv[..., :-rd], 64, inplace=True)).  RoPE dims are
    bf16 in the reference; here they stay unrounded (the C side keeps fp32).
  * indexer: q after RoPE and every index key after the compressor's norm and RoPE are rotated
    (Walsh-Hadamard, Sylvester order, scale d^-1/2) and rounded through e2m1 per 32
    (fp4_act_quant: amax floored at 6 * 2^-126, scale 2^ceil(log2(amax * fp32(1/6)))).
  * routed experts: the routing weight multiplies the SwiGLU output BEFORE the down product
    (Expert.forward: x = weights * x; w2(x)), so it is inside the act-quantized input.
  * router, compressors, SwiGLU, norms, attention, logits: float64 here (fp32 in the C).
    The reference stores activations in bf16; neither side reproduces that.

Non-multiple-of-block widths (the fixture's 96 non-RoPE dims = 64 + 32) use a shorter last
block; the reference asserts on them (its real widths are multiples).

Golden data written next to each fixture (tests/model/published/<variant>/):
  ref_logits_full.bin, ref_logits_chunked.bin   float32 [n_tokens][vocab] (tokens.json)
  ref_act.bin + ref_meta.json                   chosen matmul inputs: fp32 x, e4m3 codes, e8m0
                                                scales, and the act-quantized product (fp32)
  ref_kv.bin                                    KV of chosen layers after the full prompt in one
                                                call: window entries, compressed entries and
                                                index keys as the fp32 values the rounding
                                                leaves, plus their e4m3 / e2m1 codes and scales
ref_meta.json says where each array starts (byte offsets), its shape and dtype.

Usage: /tmp/v4venv/bin/python scripts/quant/make_reference.py [--check] [variant ...]
(numpy only; with torch installed the e4m3 / e2m1 rounding is cross-checked against torch's
casts).  --check recomputes and compares with the committed files instead of writing.
"""

import argparse
import json
import os
import struct
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "parity"))
import numpy_ref as nr  # noqa: E402

ROOT = os.path.join(HERE, "..", "..", "tests", "model", "published")
F32 = np.float32

# =============================================================================================
# Rounding (kernel.py's act_quant / fp4_act_quant), written from their definitions
# =============================================================================================


def round_scale(s):
    """fast_round_scale: 2^(exponent of s, +1 when the mantissa is not zero), from fp32 bits."""
    u = np.asarray(s, dtype=F32).view(np.uint32).astype(np.int64)
    e = ((u >> 23) & 0xFF) - 127 + ((u & 0x7FFFFF) != 0)
    return ((e + 127) << 23).astype(np.uint32).view(F32)


def _rne_grid(a, mbits, emin):
    """|a| (float64, exact fp32 values) rounded to nearest even on a float grid with `mbits`
    mantissa bits and smallest normal exponent emin (subnormals below)."""
    _, e = np.frexp(a)
    E = np.maximum(e - 1, emin)
    step = np.ldexp(1.0, E - mbits)
    return np.rint(a / step) * step  # a / step exact (power of two); np.rint: ties to even


E4M3_VALUES = None


def _e4m3_table():
    global E4M3_VALUES
    if E4M3_VALUES is None:
        v = np.zeros(256)
        for c in range(256):
            s, e, m = c >> 7, (c >> 3) & 15, c & 7
            mag = m * 2.0**-9 if e == 0 else (1 + m / 8) * 2.0 ** (e - 7)
            v[c] = -mag if s else mag
        v[0x7F] = v[0xFF] = np.nan
        E4M3_VALUES = v
    return E4M3_VALUES


E2M1_MAG = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6], dtype=np.float64)


def e4m3_codes(q):
    """q (fp32, |q| <= 448) -> e4m3fn codes, round to nearest even, sign kept (-0 = 0x80)."""
    a = np.abs(q.astype(np.float64))
    r = _rne_grid(a, 3, -6)
    _, e = np.frexp(r)
    E = np.maximum(e - 1, -6)
    mant = np.where(r == 0, 0, np.rint(r / np.ldexp(1.0, E - 3))).astype(np.int64)  # 8..15 or <8
    normal = mant >= 8
    code = np.where(normal, ((E + 7) << 3) | (mant - 8), mant)
    code = np.where(r == 0, 0, code).astype(np.uint8)
    return code | (np.signbit(q).astype(np.uint8) << 7)


def e2m1_codes(q):
    """q (fp32, |q| <= 6) -> e2m1 codes (one a byte), round to nearest even, sign in bit 3."""
    a = np.abs(q.astype(np.float64))
    r = _rne_grid(a, 1, 0)
    mag = np.searchsorted(E2M1_MAG, r).astype(np.uint8)
    assert np.all(E2M1_MAG[mag] == r)
    return mag | (np.signbit(q).astype(np.uint8) << 3)


def e4m3_value(codes):
    return _e4m3_table()[codes]


def e2m1_value(codes):
    v = E2M1_MAG[codes & 7]
    return np.where(codes & 8, -v, v)


# Ambiguity: fp32 (the C) and float64 (this port) values of one quantity differ by an ulp or
# two, so a rounding decision that close to a tie (or an amax that close to a power-of-two
# scale boundary) can go either way, and the two forwards then differ from that position on.
# While AMBIG is a list, block_quant appends the smallest such distance of its call: in steps
# of the rounding grid for values (2e-6 step ~ 2 fp32 ulps of an e4m3 value), relative for
# the scale boundary.
AMBIG = None
TIE_STEPS = 2e-6
SCALE_REL = 2.5e-7


def _ambiguity(xb, s, fp4):
    q = np.minimum(np.abs(xb.astype(np.float64) / s[..., None].astype(np.float64)), 6.0 if fp4 else 448.0)
    _, e = np.frexp(q)
    step = np.ldexp(1.0, np.maximum(e - 1, 0 if fp4 else -6) - (1 if fp4 else 3))
    f = q / step - np.floor(q / step)
    tie = (np.abs(f - 0.5) < TIE_STEPS).any()
    r = np.abs(xb).max(axis=-1).astype(np.float64) * (1 / 6 if fp4 else 1 / 448)
    l2 = np.log2(np.maximum(r, 1e-300))
    edge = (np.abs(l2 - np.round(l2)) * np.log(2) < SCALE_REL).any()
    return bool(tie or edge)


def block_quant(x, block, fp4):
    """x [..., n] -> codes [..., n] (u8), scales [..., ceil(n/block)] (fp32 powers of two).
    The last block may be shorter."""
    x = np.asarray(x, dtype=F32)
    n = x.shape[-1]
    codes = np.zeros(x.shape, np.uint8)
    scales = np.zeros(x.shape[:-1] + ((n + block - 1) // block,), F32)
    for b, k0 in enumerate(range(0, n, block)):
        xb = x[..., k0 : k0 + block]
        amax = np.abs(xb).max(axis=-1)
        if fp4:
            s = round_scale(np.maximum(amax, F32(6 * 2.0**-126)) * F32(1 / 6))
            q = np.clip(xb / s[..., None], F32(-6), F32(6))
            codes[..., k0 : k0 + block] = e2m1_codes(q)
        else:
            s = round_scale(np.maximum(amax, F32(1e-4)) * F32(1 / 448))
            q = np.clip(xb / s[..., None], F32(-448), F32(448))
            codes[..., k0 : k0 + block] = e4m3_codes(q)
        scales[..., b] = s
        if AMBIG is not None and _ambiguity(xb, s, fp4):
            AMBIG.append(True)
    return codes, scales


def block_dequant(codes, scales, block, fp4):
    v = e2m1_value(codes) if fp4 else e4m3_value(codes)
    s = np.repeat(scales.astype(np.float64), block, axis=-1)[..., : codes.shape[-1]]
    return (v * s).astype(F32)


def e8m0_bytes(scales):
    return (np.asarray(scales, F32).view(np.uint32) >> 23).astype(np.uint8)


def hadamard(x):
    """Walsh-Hadamard over the last axis (Sylvester order), scale n^-1/2, in float64."""
    n = x.shape[-1]
    H = np.array([[1.0]])
    while H.shape[0] < n:
        H = np.block([[H, H], [H, -H]])
    return (np.asarray(x, np.float64) @ H) * (1.0 / np.sqrt(n))


def round_kv(kv, rd):
    """The non-RoPE dims (all but the last rd) through e4m3 per 64, in place of kv's values."""
    x = np.asarray(kv, np.float64).copy()
    nope = x[..., : x.shape[-1] - rd].astype(F32)
    c, s = block_quant(nope, 64, False)
    x[..., : x.shape[-1] - rd] = block_dequant(c, s, 64, False)
    return x


def round_index(v):
    """Hadamard, then e2m1 per 32 (the indexer's q and keys)."""
    h = hadamard(v).astype(F32)
    c, s = block_quant(h, 32, True)
    return block_dequant(c, s, 32, True).astype(np.float64)


def cross_check_torch():
    """e4m3 / e2m1 rounding against torch's casts, where torch is installed."""
    try:
        import torch
    except ImportError:
        return "torch not installed: rounding not cross-checked"
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.standard_normal(20000) * 10.0 ** rng.integers(-4, 3, 20000),
                        _e4m3_table()[np.isfinite(_e4m3_table())],
                        (_e4m3_table()[:-1] + _e4m3_table()[1:])[np.isfinite(_e4m3_table()[1:] + _e4m3_table()[:-1])] / 2]).astype(F32)
    x = x[np.isfinite(x)]
    q = np.clip(x, -448, 448).astype(F32)
    ours = e4m3_codes(q)
    theirs = torch.from_numpy(q).to(torch.float8_e4m3fn).view(torch.uint8).numpy()
    assert np.array_equal(ours, theirs), "e4m3 rounding differs from torch"
    msg = f"e4m3 rounding = torch float8_e4m3fn on {len(q)} values"
    if hasattr(torch, "float4_e2m1fn_x2"):
        pass  # torch has no elementwise fp4 cast to compare with
    q4 = np.clip(x / 64, -6, 6).astype(F32)
    grid = np.concatenate([-E2M1_MAG[::-1], E2M1_MAG])
    # nearest grid value, ties to the even code (even mantissa bit)
    d = np.abs(q4.astype(np.float64)[:, None] - grid[None, :])
    best = d.min(axis=1, keepdims=True)
    cand = d == best
    codes_ok = e2m1_value(e2m1_codes(q4))
    for i in np.nonzero(cand.sum(axis=1) > 1)[0]:
        vals = grid[cand[i]]
        even = [v for v in vals if np.searchsorted(E2M1_MAG, abs(v)) % 2 == 0]
        assert codes_ok[i] == even[0], (q4[i], vals)
    single = cand.sum(axis=1) == 1
    assert np.array_equal(codes_ok[single], grid[np.argmax(cand[single], axis=1)])
    return msg + "; e2m1 rounding = nearest, ties to even, on the same values / 64"


# =============================================================================================
# Loading the published checkpoint: quantized weights kept as (unscaled values, scales)
# =============================================================================================

_DT = {"F32": "<f4", "I64": "<i8", "I8": "u1", "F8_E4M3": "u1", "F8_E8M0": "u1", "BF16": "<u2"}


def read_shard(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        a = np.frombuffer(data[b:e], dtype=_DT[info["dtype"]]).reshape(info["shape"])
        if info["dtype"] == "BF16":
            a = (a.astype(np.uint32) << 16).view(F32)
        out[name] = (info["dtype"], a)
    return out


class QW:
    """A quantized weight: unscaled values v [rows][K] (float64) and scales s [rows][K/kb]
    (fp32) with kb = 128 (fp8) or 32 (fp4)."""

    def __init__(self, v, s, kb, fp4):
        self.v, self.s, self.kb, self.fp4 = v, s, kb, fp4

    def dequant(self):
        return self.v * np.repeat(self.s.astype(np.float64), self.kb, axis=1)[:, : self.v.shape[1]]


def load_published(d):
    with open(os.path.join(d, "model.safetensors.index.json")) as f:
        idx = json.load(f)
    raw = {}
    for shard in sorted(set(idx["weight_map"].values())):
        raw.update(read_shard(os.path.join(d, shard)))
    plain, quant = {}, {}
    for name, (dt, a) in raw.items():
        if name.startswith("mtp.") or name.endswith(".scale"):
            continue
        if dt in ("F8_E4M3", "I8"):
            sdt, sc = raw[name[: -len("weight")] + "scale"]
            sc = ((sc.astype(np.uint32) << 23).view(F32) if sdt == "F8_E8M0" else sc).astype(F32)
            if dt == "F8_E4M3":
                v = e4m3_value(a)
                rows, K = v.shape
                s = np.repeat(sc, 128, axis=0)[:rows]  # row r: block row r / 128
                qw = QW(v, s, 128, False)
            else:
                lo, hi = a & 15, a >> 4
                codes = np.stack([lo, hi], axis=-1).reshape(a.shape[0], -1)
                qw = QW(e2m1_value(codes), sc, 32, True)
            quant[name] = qw
            plain[name] = qw.dequant()
        elif dt == "I64":
            plain[name] = a.astype(np.int64)
        else:
            plain[name] = a.astype(np.float64)
    return plain, quant


# =============================================================================================
# The act-quantized product
# =============================================================================================


def qproduct(x, qw, trace=None):
    """x [S, K] -> fp32 [S, rows]: fp8_gemm / fp4_gemm of act_quant(x) and the weight."""
    x32 = np.asarray(x, F32)
    codes, sa = block_quant(x32, 128, False)
    xa = e4m3_value(codes)
    if trace is not None:
        trace.update(x=x32, codes=codes, scales=e8m0_bytes(sa))
    S, K = x32.shape
    acc = np.zeros((S, qw.v.shape[0]), F32)
    for kb, k0 in enumerate(range(0, K, qw.kb)):
        k1 = min(K, k0 + qw.kb)
        p = (xa[:, k0:k1] @ qw.v[:, k0:k1].T).astype(F32)  # exact in float64, rounded once
        a = sa[:, k0 // 128][:, None]
        b = qw.s[:, kb][None, :]
        acc = acc + ((p * a) * b if qw.fp4 else p * (a * b))
    if trace is not None:
        trace["y"] = acc
    return acc


# =============================================================================================
# The model: numpy_ref's structure, the reference's numerics
# =============================================================================================


def published_config(d):
    with open(os.path.join(d, "config.json")) as f:
        raw = json.load(f)
    rs = raw.get("rope_scaling")
    if rs and not raw.get("rope_parameters"):
        rp = {k: v for k, v in rs.items() if k != "type"}
        rp["rope_type"] = rs.get("type", "default")
        rp.pop("rope_theta", None)  # the compress rope's theta is compress_rope_theta
        rp["attention_factor"] = 1.0  # mscale forced to 1 (V4-REAL.md section 1)
        raw["rope_parameters"] = rp
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(raw, f)
    try:
        return nr.load_config(f.name)
    finally:
        os.unlink(f.name)


class Reference(nr.DeepseekV4):
    def __init__(self, model_dir):
        self.cfg = published_config(model_dir)
        plain, quant = load_published(model_dir)
        self.w = nr.to_module_names(plain)
        # quantized weights under module names; experts: gate|up rows stacked per expert
        self.q = {}
        experts = {}
        for key, qw in quant.items():
            k = key
            for pat, rep in nr._RENAMES:
                k = nr.re.sub(pat, rep, k)
            m = nr.re.match(r"^(.*\.experts)\.(\d+)\.(w[123])\.weight$", k)
            if m:
                experts.setdefault("model." + m.group(1), {}).setdefault(int(m.group(2)), {})[m.group(3)] = qw
            else:
                self.q["model." + k] = qw
        for prefix, per in experts.items():
            for e, parts in per.items():
                g, u = parts["w1"], parts["w3"]
                self.q[f"{prefix}.gate_up_proj.{e}"] = QW(np.concatenate([g.v, u.v]), np.concatenate([g.s, u.s]), g.kb, g.fp4)
                self.q[f"{prefix}.down_proj.{e}"] = parts["w2"]
        self.dt = np.float64
        self.rope = {"main": nr.Rope(self.cfg["rope_main"], self.cfg["head_dim"]),
                     "compress": nr.Rope(self.cfg["rope_compress"], self.cfg["head_dim"])}
        self.eps = self.cfg["rms_norm_eps"]
        self.traces = {}  # name -> dict, filled when a traced product runs (first call only)
        self.trace_names = set()

    def lin(self, x, name, trace_as=None):
        """x [S, K] times weight `name` ([rows][K]): act-quantized when it is FP8/FP4 (not wo_a)."""
        qw = self.q.get(name)
        if qw is None or name.endswith("o_a_proj.weight"):
            return np.asarray(x, np.float64) @ self.w[name].T if qw is None else x @ qw.dequant().T
        tr = {} if (trace_as and trace_as in self.trace_names and trace_as not in self.traces) else None
        y = qproduct(x, qw, tr).astype(np.float64)
        if tr is not None:
            self.traces[trace_as] = tr
        return y

    def compressor_feed(self, st, a, kv_w, gate_w, pbias, norm_w, rope, index=False):
        n0 = len(st.entries)
        super().compressor_feed(st, a, kv_w, gate_w, pbias, norm_w, rope)
        rd = rope.r
        for i in range(n0, len(st.entries)):
            st.entries[i] = round_index(st.entries[i]) if index else round_kv(st.entries[i], rd)

    def indexer_select(self, li, st, qr_t, a_t, pos, q=None):
        cfg = self.cfg
        n_valid = min(len(st.entries), (pos + 1) // st.m)
        if n_valid == 0:
            return []
        nh, c = cfg["index_n_heads"], cfg["index_head_dim"]
        p = "self_attn.compressor.indexer."
        hw = (self.L(li, p + "scorer.weights_proj.weight") @ a_t) * nh**-0.5
        K = np.stack(st.entries[:n_valid])
        scores = (np.maximum(q @ K.T, 0.0) * c**-0.5 * hw[:, None]).sum(axis=0)
        k = min(cfg["index_topk"], n_valid)
        order = np.argsort(-scores, kind="stable")
        return sorted(order[:k].tolist())

    def attention(self, li, x, positions, st):
        cfg = self.cfg
        H, d = cfg["num_attention_heads"], cfg["head_dim"]
        S = x.shape[0]
        rope = self.rope["main" if st.kind == "sliding_attention" else "compress"]
        pre = f"model.layers.{li}."
        a = nr.rms_norm(x, self.L(li, "input_layernorm.weight"), self.eps)
        qr = nr.rms_norm(self.lin(a, pre + "self_attn.q_a_proj.weight", f"l{li}.wq_a"),
                         self.L(li, "self_attn.q_a_norm.weight"), self.eps)
        q = self.lin(qr, pre + "self_attn.q_b_proj.weight", f"l{li}.wq_b").reshape(S, H, d)
        q = nr.rms_norm(q, None, self.eps)
        kv = nr.rms_norm(self.lin(a, pre + "self_attn.kv_proj.weight", f"l{li}.wkv"),
                         self.L(li, "self_attn.kv_norm.weight"), self.eps)
        q = np.stack([rope.apply(q[i], positions[i]) for i in range(S)])
        kv = np.stack([rope.apply(kv[i], positions[i]) for i in range(S)])
        kv = round_kv(kv, rope.r)

        raw_kv = np.concatenate([st.sliding.kv, kv])
        raw_pos = np.concatenate([st.sliding.pos, positions])
        if st.comp is not None:
            p = "self_attn.compressor."
            self.compressor_feed(st.comp, a, self.L(li, p + "kv_proj.weight"), self.L(li, p + "gate_proj.weight"),
                                 self.L(li, p + "position_bias"), self.L(li, p + "kv_norm.weight"), rope)
        qi = None
        if st.index is not None:
            p = "self_attn.compressor.indexer."
            self.compressor_feed(st.index, a, self.L(li, p + "kv_proj.weight"), self.L(li, p + "gate_proj.weight"),
                                 self.L(li, p + "position_bias"), self.L(li, p + "kv_norm.weight"),
                                 self.rope["compress"], index=True)
            nh, c = cfg["index_n_heads"], cfg["index_head_dim"]
            qi = self.lin(qr, pre + p + "q_b_proj.weight", f"l{li}.idx_wq_b").reshape(S, nh, c)
            qi = np.stack([round_index(self.rope["compress"].apply(qi[i], positions[i])) for i in range(S)])
            self.last_qi = (li, qi)

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
                sel = self.indexer_select(li, st.index, qr[i], a[i], t, qi[i])
                if sel:
                    keys.append(np.stack([st.comp.entries[j] for j in sel]))
            K = np.concatenate(keys)
            logits = (q[i] @ K.T) * d**-0.5
            mx = np.maximum(logits.max(axis=1), sinks)
            e = np.exp(logits - mx[:, None])
            pr = e / (e.sum(axis=1) + np.exp(sinks - mx))[:, None]
            out[i] = rope.apply(pr @ K, t, inverse=True)
        st.sliding.kv, st.sliding.pos = raw_kv[-st.sliding.keep :], raw_pos[-st.sliding.keep :]

        g, R = cfg["o_groups"], cfg["o_lora_rank"]
        wa = self.q[pre + "self_attn.o_a_proj.weight"].dequant() if pre + "self_attn.o_a_proj.weight" in self.q \
            else self.L(li, "self_attn.o_a_proj.weight")
        wa = wa.reshape(g, R, H * d // g)
        z = np.einsum("sgi,gri->sgr", out.reshape(S, g, H * d // g), wa).reshape(S, g * R)
        return self.lin(z, pre + "self_attn.o_b_proj.weight", f"l{li}.wo_b")

    def moe(self, li, x, token_ids):
        cfg = self.cfg
        pre = f"model.layers.{li}."
        b = nr.rms_norm(x, self.L(li, "post_attention_layernorm.weight"), self.eps)
        I, k = cfg["moe_intermediate_size"], cfg["num_experts_per_tok"]
        logits = b @ self.L(li, "mlp.gate.weight").T
        scores = np.sqrt(nr.softplus(logits)) if cfg["scoring_func"] == "sqrtsoftplus" else nr.sigmoid(logits)
        picks = []
        for s in range(b.shape[0]):
            if cfg["mlp_layer_types"][li] == "hash_moe":
                idx = self.L(li, "mlp.gate.tid2eid")[token_ids[s]]
            else:
                idx = np.argsort(-(scores[s] + self.L(li, "mlp.gate.e_score_correction_bias")), kind="stable")[:k]
            wts = scores[s, idx]
            picks.append((idx, wts / (wts.sum() + 1e-20) * cfg["routed_scaling_factor"]))
        y = np.zeros(b.shape, F32)
        E = cfg["n_routed_experts"]
        for e in range(E):  # ascending experts, each over the tokens routed to it (MoE.forward)
            rows = [(s, float(w[list(idx).index(e)])) for s, (idx, w) in enumerate(picks) if e in list(idx)]
            if not rows:
                continue
            tok = [s for s, _ in rows]
            wt = np.array([w for _, w in rows], F32)[:, None]
            h = self.lin(b[tok], f"{pre}mlp.experts.gate_up_proj.{e}", f"l{li}.expert{e}.gate_up").astype(F32)
            act = self.swiglu(h[:, :I].astype(np.float64), h[:, I:].astype(np.float64)).astype(F32)
            out = self.lin((act * wt).astype(F32), f"{pre}mlp.experts.down_proj.{e}").astype(F32)
            for r, s in enumerate(tok):
                y[s] = y[s] + out[r]
        gate = self.lin(b, pre + "mlp.shared_experts.gate_proj.weight", f"l{li}.shared.w1").astype(np.float64)
        up = self.lin(b, pre + "mlp.shared_experts.up_proj.weight").astype(np.float64)
        sh = self.lin(self.swiglu(gate, up).astype(F32), pre + "mlp.shared_experts.down_proj.weight").astype(F32)
        return (y + sh).astype(np.float64)


# =============================================================================================
# Golden data
# =============================================================================================

ACT_ROWS = 24
TRACED = ["l0.wq_a", "l0.wkv", "l0.shared.w1", "l0.expert0.gate_up", "l1.idx_wq_b"]


def run(d):
    model = Reference(d)
    with open(os.path.join(d, "tokens.json")) as f:
        tk = json.load(f)
    toks, chunks = tk["tokens"], tk["chunks"]
    model.trace_names = set(TRACED)
    st = nr.ModelState(model.cfg)
    full = model.forward(toks, st).astype(F32)
    outs, st2, p = [], nr.ModelState(model.cfg), 0
    model.trace_names = set()
    for n in chunks:
        outs.append(model.forward(toks[p : p + n], st2))
        p += n
    chunked = np.concatenate(outs).astype(F32)
    return model, st, full, chunked


def ambiguous_positions(d):
    """Positions whose forward (fed token by token) takes a rounding decision within the
    AMBIG distances of a tie: from the first of them on, the C and this port may differ."""
    global AMBIG
    model = Reference(d)
    with open(os.path.join(d, "tokens.json")) as f:
        toks = json.load(f)["tokens"]
    st, out = nr.ModelState(model.cfg), []
    for p, t in enumerate(toks):
        AMBIG = []
        model.forward([t], st)
        if AMBIG:
            out.append(p)
    AMBIG = None
    return out


def kv_arrays(model, st):
    """Per layer: window entries (positions in ring order p % W), compressed entries, index keys;
    fp32 values and their codes / scales."""
    cfg = model.cfg
    W, d = cfg["sliding_window"], cfg["head_dim"]
    out = {}
    for li, ls in enumerate(st.layers):
        rd = (model.rope["main"] if ls.kind == "sliding_attention" else model.rope["compress"]).r
        kv, pos = ls.sliding.kv, ls.sliding.pos
        out[f"l{li}.window.pos"] = pos.astype(np.int32)
        out[f"l{li}.window"] = kv.astype(F32)
        c, s = block_quant(kv[:, : d - rd].astype(F32), 64, False)
        out[f"l{li}.window.codes"], out[f"l{li}.window.scales"] = c, e8m0_bytes(s)
        if ls.comp is not None and ls.comp.entries:
            ce = np.stack(ls.comp.entries).astype(F32)
            out[f"l{li}.comp"] = ce
            c, s = block_quant(ce[:, : d - rd], 64, False)
            out[f"l{li}.comp.codes"], out[f"l{li}.comp.scales"] = c, e8m0_bytes(s)
        if ls.index is not None and ls.index.entries:
            ie = np.stack(ls.index.entries).astype(F32)
            out[f"l{li}.index"] = ie
            c, s = block_quant(ie, 32, True)
            out[f"l{li}.index.codes"], out[f"l{li}.index.scales"] = c, e8m0_bytes(s)
    if getattr(model, "last_qi", None) is not None:
        li, qi = model.last_qi
        out[f"l{li}.index_q.last"] = qi[-1].astype(F32)
    return out


def write_blob(path, arrays):
    meta, off = {}, 0
    with open(path, "wb") as f:
        for name, a in arrays.items():
            a = np.ascontiguousarray(a)
            dt = {np.dtype(F32): "f32", np.dtype(np.uint8): "u8", np.dtype(np.int32): "i32"}[a.dtype]
            pad = -off % 16  # every array 16-byte aligned in the file (readers map it as is)
            f.write(b"\0" * pad)
            off += pad
            f.write(a.tobytes())
            meta[name] = {"offset": off, "shape": list(a.shape), "dtype": dt}
            off += a.nbytes
    return meta


def generate(variant, check):
    d = os.path.join(ROOT, variant)
    model, st, full, chunked = run(d)
    act = {}
    for name in TRACED:
        tr = model.traces.get(name)
        if tr is None:
            continue
        for part in ("x", "codes", "scales", "y"):
            act[f"{name}.{part}"] = tr[part][:ACT_ROWS]  # the first rows: small files
    kv = kv_arrays(model, st)
    scale = float(np.abs(full).max())
    if check:
        ref_full = np.fromfile(os.path.join(d, "ref_logits_full.bin"), "<f4").reshape(full.shape)
        ref_chunk = np.fromfile(os.path.join(d, "ref_logits_chunked.bin"), "<f4").reshape(full.shape)
        e1 = np.abs(full - ref_full).max() / scale
        e2 = np.abs(chunked - ref_chunk).max() / scale
        print(f"{variant}: recomputed vs committed: one call {e1:.2e}, chunked {e2:.2e}")
        return e1 <= 1e-6 and e2 <= 1e-6
    full.tofile(os.path.join(d, "ref_logits_full.bin"))
    chunked.tofile(os.path.join(d, "ref_logits_chunked.bin"))
    amb = ambiguous_positions(d)
    meta = {
        "what": "DeepSeek reference numerics (scripts/quant/make_reference.py)",
        "ambiguous_positions": amb,
        "ambiguous_from": amb[0] if amb else len(full),
        "ambiguity": f"a rounding decision within {TIE_STEPS} grid steps of a tie or an amax within "
                     f"{SCALE_REL} (relative) of a scale boundary: fp32 and float64 may round it apart",
        "max_abs_logit": scale,
        "full_vs_chunked_max_abs_diff": float(np.abs(full - chunked).max()),
        "act": write_blob(os.path.join(d, "ref_act.bin"), act),
        "kv": write_blob(os.path.join(d, "ref_kv.bin"), kv),
    }
    with open(os.path.join(d, "ref_meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print(f"{variant}: max|logit| {scale:.4g}, full vs chunked {meta['full_vs_chunked_max_abs_diff']:.2e}, "
          f"ambiguous positions {amb}, "
          f"{len(act)} act arrays, {len(kv)} kv arrays")
    return True


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("variants", nargs="*", default=["instruct", "base"])
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    print(cross_check_torch())
    ok = all([generate(v, args.check) for v in args.variants])
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
