#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""
tests/http/make_tool_model.py SRC V4_TOKENIZER_JSON OUT STAMP

A V4-format checkpoint whose output we choose, for the tool round trip over
HTTP: it writes one tool call (get_weather, city Paris) for a question and,
once the tool's result is in its prompt, an answer; in thinking mode a line of
reasoning before each. Made from SRC (tests/model/published/instruct, for the
tensor names, shapes and dtypes) and V4's tokenizer.json (for its
pre-tokenizer, decoder and markup strings). Python's standard library only
(CI has no numpy or torch); run at build time.

How the weights decide (every layer is the real V4 forward pass):
- Every o_b_proj but layer 0's and every expert's down projection are zero,
  every mHC `fn` is zero with zero bases (pre = 1/2 per stream, post = 1,
  comb = 1/2 everywhere): each stream stays the token's embedding plus layer
  0's attention output, and hc_head's sum is that vector; the final RMSNorm
  (weight 1) drops the scale.
- Embeddings are one-hot: the tokens the chains below pass through each own a
  dimension, all others share one ("other", whose successor is EOS).
- Layer 0's attention is uniform over its sliding window (q_b_proj zero, so
  every score is 0; the sink logit very negative); kv_proj maps only the
  `<tool_result>` token to a nonzero key/value (dimension 0, kv_norm makes it
  sqrt(D)), and o_a_proj/o_b_proj carry it to the residual's dimension 0, the
  FLAG: while a tool result is within the window, the residual is
  (token, flag) with a fixed ratio (1/W of the value, times o_b_proj's 2).
- lm_head is a bigram table (row of each successor = M on its predecessor's
  dimension), except the two tokens that start the after-the-result chains:
  their rows read M/2 on their predecessor and F on the flag, so with a tool
  result in view they beat the plain successor of the same last token, and
  nowhere else do they win (M*a > F*b > M*a/2 for the normed (a, b)).

The tokenizer is V4's pipeline over a tiny vocabulary: the 256 byte symbols,
V4's markup as added tokens with their real strings, and added tokens that
are whole pieces of the chains (so no chain repeats an id). One DSML
parameter line is sampled as two tokens while a third added token holds the
whole line: re-tokenizing the tool call sent back gives other ids than were
sampled, so only the front's replay of the sampled ids lets the next request
hit the prefix unit left at the end of the reply.
"""
import json
import lzma
import os
import struct
import sys

BOS, EOS, PAD = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>"
USER, ASSISTANT, THINK, THINK_END, DSML = "<｜User｜>", "<｜Assistant｜>", "<think>", "</think>", "｜DSML｜"
RESULT, RESULT_END = "<tool_result>", "</tool_result>"
# the chains' pieces (tests/http/test_tools.py spells out what they join to)
A1 = "\n\n<｜DSML｜tool_calls>\n"
A2 = "<｜DSML｜invoke name=\"get_weather\">\n"
A3A = "<｜DSML｜parameter name=\"city\" string=\"true\">"
A3B = "Paris</｜DSML｜parameter>\n"
A3 = A3A + A3B  # never sampled: what the re-rendered call tokenizes to
A4 = "</｜DSML｜invoke>\n"
A5 = "</｜DSML｜tool_calls>"
R1 = "The user asks for the weather in Paris; get_weather tells it."
R2 = "The tool has answered; I can reply."
B1 = "It is sunny in Paris"
B2 = ", 22 degrees."

# successor of each token (bigram); the flag readers are separate
CHAIN = {
    THINK_END: A1, A1: A2, A2: A3A, A3A: A3B, A3B: A4, A4: A5, A5: EOS,
    THINK: R1, R1: THINK_END,
    R2: THINK_END, B1: B2, B2: EOS,
}
# token -> the last token after which, with a tool result in view, it comes
FLAGGED = {R2: THINK, B1: THINK_END}

M, M_HALF, F = 8.0, 4.0, 8.0
SINK = -30.0
FLAG_DIM, OTHER_DIM = 0, 1


def read_st(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    meta = header.pop("__metadata__", None)
    out = {}
    for name, t in header.items():
        a, b = t["data_offsets"]
        out[name] = [t["dtype"], t["shape"], data[a:b]]
    return out, meta


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


def bf16(x):
    return struct.pack("<f", x)[2:4]  # exact for the values used here


def numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


ELEM = {"BF16": 2, "F32": 4, "F8_E4M3": 1, "F8_E8M0": 1, "I8": 1, "I64": 8}
FP8 = {0.0: 0x00, 1.0: 0x38, 2.0: 0x40}  # e4m3
SCALE_ONE = 0x7F  # e8m0 2^0


def zeros(dtype, shape):
    return bytearray(ELEM[dtype] * numel(shape))


def byte_symbols():
    """GPT-2's byte -> printable character map (ByteLevel)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs))]


def tokenizer(v4):
    """V4's pipeline over bytes + the added tokens; returns (json, ids)."""
    ids = {BOS: 0, EOS: 1, PAD: 2}
    vocab = {BOS: 0, EOS: 1, PAD: 2}  # as in V4's vocab: ids 0..2 are there too
    for i, s in enumerate(byte_symbols()):
        vocab[s] = 3 + i
    added = [(BOS, True), (EOS, True), (PAD, True)]
    nxt = 3 + 256
    pieces = [USER, ASSISTANT, THINK, THINK_END, DSML, RESULT, RESULT_END,
              A1, A2, A3A, A3B, A3, A4, A5, R1, R2, B1, B2]
    for p in pieces:
        ids[p] = nxt
        nxt += 1
        added.append((p, False))
    v4_added = {a["content"]: a for a in v4["added_tokens"]}
    entries = []
    for content, special in added:
        ref = v4_added.get(content)
        entries.append({"id": ids[content], "content": content, "single_word": False, "lstrip": False,
                        "rstrip": False,
                        "normalized": ref["normalized"] if ref else False,
                        "special": special})
    model = dict(v4["model"])
    model["vocab"] = vocab
    model["merges"] = []
    tok = {"version": v4["version"], "truncation": None, "padding": None, "added_tokens": entries,
           "normalizer": v4["normalizer"], "pre_tokenizer": v4["pre_tokenizer"],
           "post_processor": v4["post_processor"], "decoder": v4["decoder"], "model": model}
    return tok, ids, nxt


def main():
    if len(sys.argv) != 5:
        raise SystemExit(__doc__)
    src, tok_path, out, stamp = sys.argv[1:]
    opener = lzma.open if tok_path.endswith(".xz") else open
    with opener(tok_path, "rt", encoding="utf-8") as f:
        v4 = json.load(f)
    tok, ids, vocab_size = tokenizer(v4)
    with open(os.path.join(src, "config.json")) as f:
        cfg = json.load(f)
    D = cfg["hidden_size"]
    W = cfg["sliding_window"]
    assert cfg["compress_ratios"][0] == 0, "layer 0 must be sliding-window only"
    assert cfg["o_groups"] == cfg["num_attention_heads"], "one head per output group"

    # one dimension per token a chain passes through (as last token), and the marker
    dims = {}
    for t in list(CHAIN) + list(FLAGGED.values()) + [RESULT]:
        if t not in dims:
            dims[t] = 2 + len(dims)
    assert 2 + len(dims) <= D
    dim_of = [OTHER_DIM] * vocab_size
    for t, d in dims.items():
        dim_of[ids[t]] = d

    tensors, meta = {}, None
    for f in sorted(x for x in os.listdir(src) if x.endswith(".safetensors")):
        t, m = read_st(os.path.join(src, f))
        tensors.update(t)
        meta = meta or m

    def put(name, raw, shape=None):
        dtype, old_shape, _ = tensors[name]
        tensors[name] = [dtype, shape or old_shape, bytes(raw)]

    # embeddings one-hot, lm_head the chains
    emb = zeros("BF16", [vocab_size, D])
    for i in range(vocab_size):
        emb[2 * (i * D + dim_of[i]):2 * (i * D + dim_of[i]) + 2] = bf16(1.0)
    put("embed.weight", emb, [vocab_size, D])
    head = zeros("BF16", [vocab_size, D])

    def logit(tok_id, dim, v):
        head[2 * (tok_id * D + dim):2 * (tok_id * D + dim) + 2] = bf16(v)
    for last, nxt in CHAIN.items():
        logit(ids[nxt], dims[last], M)
    logit(ids[EOS], OTHER_DIM, M)
    for t, last in FLAGGED.items():
        logit(ids[t], dims[last], M_HALF)
        logit(ids[t], FLAG_DIM, F)
    put("head.weight", head, [vocab_size, D])

    for name in list(tensors):
        dtype, shape, raw = tensors[name]
        base = name.split(".")[-1]
        if name.endswith("ffn.gate.tid2eid"):
            row = 8 * shape[1]
            put(name, b"".join(raw[(i % shape[0]) * row:(i % shape[0] + 1) * row]
                               for i in range(vocab_size)), [vocab_size] + shape[1:])
        elif name.startswith("mtp."):
            continue  # the draft layer is not part of what is sampled
        elif ".w2." in name or name.endswith("attn.wo_b.weight") or \
                name.endswith("attn.wq_b.weight"):
            put(name, zeros(dtype, shape))
        elif base.startswith("hc_") and (base.endswith("_fn") or base.endswith("_base")):
            put(name, zeros(dtype, shape))
        elif dtype == "BF16" and base == "weight" and ("norm" in name):
            put(name, bf16(1.0) * numel(shape))
        elif name.endswith("attn.attn_sink"):
            put(name, struct.pack("<f", SINK) * numel(shape))

    # layer 0: the marker's key/value, carried to the flag dimension
    def fp8(name, entries):
        dtype, shape, _ = tensors[name]
        w = zeros(dtype, shape)
        for (r, c), v in entries.items():
            w[r * shape[1] + c] = FP8[v]
        put(name, w)
        sname = name[:-len("weight")] + "scale"
        put(sname, bytes([SCALE_ONE]) * numel(tensors[sname][1]))
    fp8("layers.0.attn.wkv.weight", {(0, dims[RESULT]): 1.0})
    fp8("layers.0.attn.wo_a.weight", {(0, 0): 1.0})
    fp8("layers.0.attn.wo_b.weight", {(FLAG_DIM, 0): 2.0})
    assert W == 32, "the flag ratio (and F) is set for a 32-token window"

    os.makedirs(out, exist_ok=True)
    write_st(os.path.join(out, "model.safetensors"), tensors, meta)
    cfg["vocab_size"] = vocab_size
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    with open(os.path.join(out, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tok, f, ensure_ascii=False)
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": BOS, "eos_token": EOS, "tokenizer_class": "PreTrainedTokenizerFast"},
                  f, ensure_ascii=False)
    with open(stamp, "w") as f:
        f.write("ok\n")


if __name__ == "__main__":
    main()
