#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""
tests/daemon/make_vocab_model.py SRC TOKENIZER_JSON OUT STAMP

A published-format V4 model that speaks V4's real tokenizer: SRC (a small
checkpoint in DeepSeek's layout, tests/model/published/instruct) with its
vocabulary-sized tensors (embed.weight, head.weight, the hash layers'
ffn.gate.tid2eid) grown to 129,280 rows, the new rows random (seeded), and
config.json's vocab_size to match; TOKENIZER_JSON and a tokenizer_config.json
(BOS/EOS as V4's) beside them. Python's standard library only (CI has no
numpy or torch); run at build time, so no large file is committed.
"""
import json
import os
import random
import shutil
import struct
import sys

VOCAB = 129280


def read_st(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    meta = header.pop("__metadata__", None)
    out = {}
    for name, t in header.items():
        a, b = t["data_offsets"]
        out[name] = (t["dtype"], t["shape"], data[a:b])
    return out, meta


def grow(name, dtype, shape, raw, rng):
    """Rows up to VOCAB for the tensors indexed by token id."""
    vocab_sized = name in ("embed.weight", "head.weight") or name.endswith("ffn.gate.tid2eid")
    if not vocab_sized or shape[0] >= VOCAB:
        return shape, raw
    rows = VOCAB - shape[0]
    row_elems = 1
    for d in shape[1:]:
        row_elems *= d
    if dtype == "BF16":
        # small values around +-2^-8..2^-7: random mantissa, fixed exponent
        lo = rng.randbytes(rows * row_elems)
        hi = bytes(0x3B | (b & 0x80) for b in rng.randbytes(256))
        table = bytes(hi[i] for i in range(256))
        hi_bytes = rng.randbytes(rows * row_elems).translate(table)
        extra = bytearray(2 * rows * row_elems)
        extra[0::2] = lo
        extra[1::2] = hi_bytes
    elif dtype == "I64":
        # the hash layer's experts per token: copy existing rows' choices
        row_bytes = 8 * row_elems
        n_src = shape[0]
        extra = bytearray()
        for r in range(rows):
            k = rng.randrange(n_src)
            extra += raw[k * row_bytes:(k + 1) * row_bytes]
    else:
        raise SystemExit(f"{name}: cannot grow dtype {dtype}")
    return [VOCAB] + shape[1:], raw + bytes(extra)


def write_st(path, tensors, meta):
    header = {}
    off = 0
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(raw)]}
        off += len(raw)
    if meta is not None:
        header["__metadata__"] = meta
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for _, (_, _, raw) in tensors.items():
            f.write(raw)


def main():
    if len(sys.argv) != 5:
        raise SystemExit(__doc__)
    src, tok, out, stamp = sys.argv[1:]
    rng = random.Random(15)
    os.makedirs(out, exist_ok=True)
    files = sorted(f for f in os.listdir(src) if f.endswith(".safetensors"))
    tensors, meta = {}, None
    for f in files:
        t, m = read_st(os.path.join(src, f))
        tensors.update(t)
        meta = meta or m
    for name in list(tensors):
        dtype, shape, raw = tensors[name]
        shape, raw = grow(name, dtype, shape, raw, rng)
        tensors[name] = (dtype, shape, raw)
    write_st(os.path.join(out, "model.safetensors"), tensors, meta)
    with open(os.path.join(src, "config.json")) as f:
        cfg = json.load(f)
    cfg["vocab_size"] = VOCAB
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    shutil.copyfile(tok, os.path.join(out, "tokenizer.json"))
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "<｜begin▁of▁sentence｜>", "eos_token": "<｜end▁of▁sentence｜>",
                   "tokenizer_class": "PreTrainedTokenizerFast"}, f, ensure_ascii=False)
    # the stamp meson waits for
    with open(stamp, "w") as f:
        f.write("ok\n")


if __name__ == "__main__":
    main()
