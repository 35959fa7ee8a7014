#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Write the numpy-parity fixtures of tests/engram (run from the repository root).

    python3 tests/engram/gen_fixtures.py [--check]

fixtures/numpy_rng.json
    What numpy itself returns for the pieces engram/numpy_random.c reimplements:
    - seedseq: SeedSequence(entropy).generate_state(8) for entropies of 1..6 uint32 words
      (the pool is 4 words; longer entropy takes the "remaining entropy" mixing path);
    - cases: 200 x default_rng(seed).integers(0, bound, n, dtype=int64), with the first raw
      64-bit outputs of a fresh PCG64 for the same seed; bounds cover 1 (no draw), the 32-bit
      Lemire path (rng <= 0xFFFFFFFF, including 0xFFFFFFFF itself and high-rejection ranges such
      as 2^31 + 1) and the 64-bit Lemire path (rng > 0xFFFFFFFF, up to INT64_MAX);
    - sequences: several integers() calls on one generator (the half-used 32-bit word PCG64
      keeps between calls must carry over);
    - multipliers: the Engram multipliers for a few (seed, layer, compressed vocab, N).
    Seeds and raw outputs are decimal strings (they may not fit int64).

fixtures/hash_negative_ids.json
    A file in the golden format (see /work/shared/golden/engram/README.md) whose input ids
    include negative values, down to INT64_MIN: the demo's compressor passes negative ids
    through unmapped, so tok * mult overflows int64 (numpy wraps) and the XOR may be negative
    (numpy's % takes the divisor's sign). Made by ngram_hashes() below, a numpy
    transcription of the demo's NgramHashMapping (engram_demo_v1.py), checked first against
    the golden files in tests/engram/golden/.

--check regenerates in memory and exits 1 if a committed fixture differs (numpy drift).
"""
import json
import random
import sys
from pathlib import Path

import numpy as np

try:
    from sympy import isprime  # what the demo uses
except ImportError:  # pragma: no cover
    isprime = None

HERE = Path(__file__).resolve().parent
INT64_MAX = (1 << 63) - 1
INT64_MIN = -(1 << 63)


def _isprime(n):
    if isprime is not None:
        return bool(isprime(n))
    if n < 2:
        return False
    i = 2
    while i * i <= n:
        if n % i == 0:
            return False
        i += 1
    return True


# ---- the demo's hashing, transcribed ------------------------------------------------------

def multipliers(seed, layer_id, compressed_vocab, n):
    half_bound = max(1, (INT64_MAX // compressed_vocab) // 2)
    g = np.random.default_rng(int(seed + 10007 * int(layer_id)))
    r = g.integers(low=0, high=half_bound, size=(n,), dtype=np.int64)
    return r * 2 + 1


def table_sizes(layer_ids, vocab_sizes, max_n, n_head):
    seen = set()
    out = {}
    for layer in layer_ids:
        sizes = []
        for n in range(2, max_n + 1):
            start = vocab_sizes[n - 2] - 1
            for _ in range(n_head):
                c = start + 1
                while not (_isprime(c) and c not in seen):
                    c += 1
                seen.add(c)
                sizes.append(c)
                start = c
        out[layer] = sizes
    return out


def ngram_hashes(cfg, input_ids):
    lookup = np.asarray(cfg["compression_map"], dtype=np.int64)
    arr = np.asarray(input_ids, dtype=np.int64)
    x = arr.copy()
    pos = arr >= 0
    x[pos] = lookup[arr[pos]]
    pad = int(lookup[cfg["pad_id"]])
    max_n, n_head = cfg["max_ngram_size"], cfg["n_head_per_ngram"]
    sizes = table_sizes(cfg["layer_ids"], cfg["engram_vocab_size"], max_n, n_head)
    B, T = x.shape
    shifts = [x] + [np.pad(x, ((0, 0), (k, 0)), mode="constant", constant_values=pad)[:, :T]
                    for k in range(1, max_n)]
    out_mult, out_hash = {}, {}
    with np.errstate(over="ignore"):
        for layer in cfg["layer_ids"]:
            m = multipliers(cfg["seed"], layer, cfg["compressed_vocab_size"], max_n)
            cols = []
            for n in range(2, max_n + 1):
                mix = shifts[0] * m[0]
                for k in range(1, n):
                    mix = np.bitwise_xor(mix, shifts[k] * m[k])
                for j in range(n_head):
                    cols.append(mix % int(sizes[layer][(n - 2) * n_head + j]))
            out_mult[str(layer)] = [int(v) for v in m]
            out_hash[str(layer)] = np.stack(cols, axis=2).astype(np.int64).tolist()
    return out_mult, {str(k): v for k, v in sizes.items()}, out_hash


def check_golden():
    for f in sorted((HERE / "golden").glob("*.json")):
        d = json.loads(f.read_text())
        m, s, h = ngram_hashes(d, d["input_ids"])
        if m != d["multipliers"] or s != d["head_table_sizes"] or h != d["hashes"]:
            sys.exit(f"{f.name}: the transcription does not reproduce the golden file")


# ---- numpy_rng.json -------------------------------------------------------------------------

def int_words(n):
    out = []
    while True:
        out.append(n & 0xFFFFFFFF)
        n >>= 32
        if n == 0:
            return out


def gen_rng():
    rnd = random.Random(0x2601_07372)
    seedseq = []
    for nw in (1, 1, 2, 3, 4, 5, 6):
        n = rnd.getrandbits(32 * nw) | (1 << (32 * nw - 1)) if nw > 1 else rnd.getrandbits(32)
        st = np.random.SeedSequence(n).generate_state(8, np.uint32)
        seedseq.append({"seed": str(n), "entropy": int_words(n),
                        "state": [int(v) for v in st]})
    seedseq.append({"seed": "0", "entropy": [0],
                    "state": [int(v) for v in np.random.SeedSequence(0).generate_state(8)]})

    seeds = [0, 1, 2, 42, 10007, 10007 * 15, 2 ** 32 - 1, 2 ** 32, 2 ** 63 - 1, 2 ** 64 - 1,
             2 ** 64, 2 ** 96 + 12345, 2 ** 128 - 1, 2 ** 160 + 7]
    bounds = [1, 2, 3, 7, 1000, 2 ** 16, 2 ** 31 - 1, 2 ** 31, 2 ** 31 + 1, 3 * 2 ** 30,
              2 ** 32 - 1, 2 ** 32, 2 ** 32 + 1, 2 ** 32 + 2, 2 ** 33, 2 ** 40 + 3,
              2 ** 62, 2 ** 62 + 1, 3 * 2 ** 61 + 1, 2 ** 63 - 2, 2 ** 63 - 1]
    for c in (1, 2, 380, 1500, 129280, 2 ** 20, 2 ** 31 + 11, 2 ** 40, 2 ** 62, INT64_MAX):
        bounds.append(max(1, (INT64_MAX // c) // 2))
    cases = []
    for i in range(200):
        if i < len(bounds):
            bound = bounds[i]
        else:
            bits = rnd.randint(1, 63)
            bound = max(1, rnd.getrandbits(bits))
        if i < len(seeds):
            seed = seeds[i]
        else:
            seed = rnd.getrandbits(rnd.choice((8, 16, 32, 33, 48, 64, 65, 100)))
        n = 0 if i == 3 else rnd.randint(1, 17)
        g = np.random.default_rng(seed)
        vals = g.integers(0, bound, n, dtype=np.int64)
        raw = np.random.default_rng(seed).bit_generator.random_raw(4)
        cases.append({"seed": str(seed), "bound": bound, "n": n,
                      "values": [int(v) for v in vals],
                      "raw": [str(int(v)) for v in raw]})

    sequences = []
    for seed in (3, 77, 2 ** 40 + 1, 123456789):
        g = np.random.default_rng(seed)
        calls = []
        for bound, n in ((1000, 3), (2 ** 31 + 1, 1), (2 ** 50, 2), (17, 5), (2 ** 32, 1),
                         (1, 4), (2 ** 62 + 1, 3), (5, 1)):
            calls.append({"bound": bound, "n": n,
                          "values": [int(v) for v in g.integers(0, bound, n, dtype=np.int64)]})
        sequences.append({"seed": str(seed), "calls": calls})

    mults = []
    for seed, layer, c, n in ((0, 1, 380, 3), (0, 3, 380, 3), (0, 1, 1500, 4), (0, 14, 1500, 4),
                              (0, 15, 129280, 3), (7, 0, 1, 5), (12345, 42, 2 ** 62, 3),
                              (99, 2, INT64_MAX, 2), (2 ** 63 - 1, 4096, 100000, 16)):
        mults.append({"seed": str(seed), "layer": layer, "compressed_vocab_size": c,
                      "max_ngram_size": n,
                      "multipliers": [int(v) for v in multipliers(seed, layer, c, n)]})

    return {"numpy_version": np.__version__, "seedseq": seedseq, "cases": cases,
            "sequences": sequences, "multipliers": mults}


# ---- hash_negative_ids.json -----------------------------------------------------------------

def gen_negative():
    rnd = random.Random(7372)
    vocab, comp = 300, 211
    cmap = [rnd.randrange(comp) for _ in range(vocab)]
    cfg = {"vocab_size": vocab, "compression_map": cmap, "compressed_vocab_size": comp,
           "engram_vocab_size": [97, 500, 89], "max_ngram_size": 4, "n_head_per_ngram": 3,
           "layer_ids": [0, 2, 9], "pad_id": 5, "seed": 2 ** 40 + 3}
    specials = [-1, -2, -100, -(2 ** 31), -(2 ** 62) - 5, INT64_MIN, INT64_MIN + 1, -7777777777]
    rows = []
    for _ in range(3):
        row = [rnd.randrange(vocab) for _ in range(20)]
        for k in rnd.sample(range(20), 6):
            row[k] = rnd.choice(specials)
        rows.append(row)
    rows[0][0] = INT64_MIN
    cfg["input_ids"] = rows
    m, s, h = ngram_hashes(cfg, rows)
    cfg["multipliers"], cfg["head_table_sizes"], cfg["hashes"] = m, s, h
    return cfg


def dump(obj):
    return json.dumps(obj, separators=(", ", ": ")) + "\n"


def main():
    check = "--check" in sys.argv[1:]
    check_golden()
    outs = {HERE / "fixtures" / "numpy_rng.json": dump(gen_rng()),
            HERE / "fixtures" / "hash_negative_ids.json": dump(gen_negative())}
    bad = 0
    for path, text in outs.items():
        if check:
            old = json.loads(path.read_text()) if path.exists() else None
            new = json.loads(text)
            for d in (old, new):
                if isinstance(d, dict):
                    d.pop("numpy_version", None)
            if old != new:
                print(f"{path}: differs from what numpy {np.__version__} gives", file=sys.stderr)
                bad = 1
        else:
            path.write_text(text)
            print(f"wrote {path}")
    sys.exit(bad)


if __name__ == "__main__":
    main()
