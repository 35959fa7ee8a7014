#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""HTTP streaming throughput and TTFT at 1, 8 and 64 concurrent streams: the
real dualpathd (--http on a Unix socket) on the embedded model, each stream a
/v1/completions SSE request of --tokens tokens (ignore_eos), read by a
thread of its own with httpx (the openai SDK's HTTP client).

    DUALPATHD=build/daemon/dualpathd build/pyenv/bin/python tests/http/bench_http.py

Prints one RESULT line per concurrency: streams, wall seconds, delivered
text chunks/s (a chunk is one token, or several when a UTF-8 character spans them), TTFT p50/p99 (ms), and compute's own decode tokens/s over the same
interval (from /metrics), so the HTTP front's share shows as the gap.

With --socket-client BUILD/bench/agentic/agentic-stream-socket each
concurrency is also run over the Unix-socket protocol on the same daemon
(the same prompt ids, tokens and sampling), interleaved with the HTTP run,
and a RESULT line gives HTTP/socket ratios of tokens/s and TTFT p50.

With --http-client BUILD/bench/agentic/agentic-stream-http the HTTP streams
are driven by that C client instead (one thread, an epoll loop, ids counted
from return_token_ids as the socket client counts them), so the ratio
compares the daemon's two fronts, C client against C client, rather than
Python's client against C.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_http as t  # noqa: E402  (the Daemon helper; re-runs under DP_PYTHON)


def one_stream(d, tokens, out):
    t0 = time.perf_counter()
    first, n = None, 0
    with d.http.stream("POST", "/v1/completions", json={
            "prompt": "The hacker", "max_tokens": tokens, "ignore_eos": True, "stream": True,
            "temperature": 0.8, "seed": 1}) as r:
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            c = json.loads(line[6:])
            if c["choices"] and c["choices"][0]["text"]:
                first = first or time.perf_counter()
                n += 1
    out.append((first - t0 if first else float("nan"), n))


def run_client(argv, streams, tokens, ids):
    """One of the C stream clients; its figures as a dict."""
    out = subprocess.run(argv + ["--streams", str(streams), "--tokens", str(tokens), "--prompt",
                                 ",".join(map(str, ids))], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr
    return dict(kv.split("=") for kv in out.stdout.split())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--streams", default="1,8,64")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--socket-client", default="")
    ap.add_argument("--http-client", default="")
    a = ap.parse_args()
    d = t.Daemon("--max-requests", "256", "--max-batch", "64")
    try:
        one_stream(d, 8, [])  # warm up
        # each front is its own tenant of the prefix cache: warm both, so
        # that neither side's first run alone pays for the prompt's prefill
        ids = d.http.post("/tokenize", json={"prompt": "The hacker"}).json()["tokens"]
        if a.socket_client:
            run_client([a.socket_client, "--socket", os.path.join(d.dir, "s")], 1, 8, ids)
        if a.http_client:
            run_client([a.http_client, "--http", d.listen], 1, 8, ids)
        for c in [int(x) for x in a.streams.split(",")]:
            m0 = d.metrics()
            if a.http_client:
                f = run_client([a.http_client, "--http", d.listen], c, a.tokens, ids)
                print("RESULT http_stream_c " + " ".join("%s=%s" % kv for kv in f.items()))
                wall, chunks = float(f["wall_s"]), int(f["tokens"])
                http_tok_s = float(f["tok_s"])
                http_ttft, http_p99 = float(f["ttft_p50_ms"]) / 1000, float(f["ttft_p99_ms"]) / 1000
            else:
                res = []
                th = [threading.Thread(target=one_stream, args=(d, a.tokens, res))
                      for _ in range(c)]
                t0 = time.perf_counter()
                for x in th:
                    x.start()
                for x in th:
                    x.join()
                wall = time.perf_counter() - t0
                ttft = sorted(r[0] for r in res)
                chunks = sum(r[1] for r in res)
                http_tok_s, http_ttft = chunks / wall, statistics.median(ttft)
                http_p99 = ttft[min(len(ttft) - 1, int(0.99 * len(ttft)))]
            m1 = d.metrics()
            dec = m1['dualpath_tokens_total{phase="decode"}'] - m0['dualpath_tokens_total{phase="decode"}']
            if a.socket_client:
                f = run_client([a.socket_client, "--socket", os.path.join(d.dir, "s")], c,
                               a.tokens, ids)
                print("RESULT socket_stream " + " ".join("%s=%s" % kv for kv in f.items()))
                print("RESULT http_vs_socket streams=%d tok_s_ratio=%.3f ttft_p50_ratio=%.3f" % (
                    c, http_tok_s / float(f["tok_s"]),
                    http_ttft / max(float(f["ttft_p50_ms"]) / 1000, 1e-9)))
            print("RESULT http_stream streams=%d %s=%d wall_s=%.3f delivered_chunks_s=%.0f "
                  "ttft_p50_ms=%.1f ttft_p99_ms=%.1f compute_decode_tok_s=%.0f" % (
                      c, "ids" if a.http_client else "text_chunks", chunks, wall, chunks / wall,
                      1000 * http_ttft, 1000 * http_p99, dec / wall))
    finally:
        d.stop()


if __name__ == "__main__":
    main()
