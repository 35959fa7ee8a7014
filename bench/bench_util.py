# SPDX-License-Identifier: MIT
"""What the transformers anchors share (bench/forward_hf.py, bench/gpu/hf_gpu.py): the token
streams, drawn exactly as bench/bench-util.h's stream_tokens draws them for bench-forward and
bench-gpu: sequence b of a run with seed S is splitmix64 from S + b, token (x >> 11) % vocab.
Change them together or the anchors measure other tokens."""

M64 = (1 << 64) - 1


def splitmix64_stream(seed, n, vocab):
    s = seed & M64
    out = []
    for _ in range(n):
        s = (s + 0x9E3779B97F4A7C15) & M64
        z = s
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        z ^= z >> 31
        out.append((z >> 11) % vocab)
    return out
