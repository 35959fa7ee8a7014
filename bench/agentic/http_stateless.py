#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""bench/agentic's HTTP mode, chat form: agent conversations played over the
OpenAI API twice in one run, each on a fresh dualpathd — with explicit
sessions (session_id, each turn only its new user message) and statelessly
(the whole history each turn, every reply sent back as received, as agent
frameworks do) — and the throughput and cache hits compared.

    DUALPATHD=build/daemon/dualpathd DP_TEST_CHAT_MODEL=build/tests/daemon/vocab-model \\
        build/pyenv/bin/python bench/agentic/http_stateless.py [--sessions 4] [--turns 6]

The model is a V4-format checkpoint (tests/daemon's vocab-model: V4's real
tokenizer, random weights), so the chat format, the reply replay and the
prefix units are the real ones. Each session is a client thread; its turn t
sends a user message of --append words and takes --gen tokens (greedy). The
shapes follow agentic-gen's (many turns, short appends, short replies), the
ids are chat text instead of the trace's byte ids, which a chat API cannot
carry. Thinking is off (encoding_dsv4 drops earlier reasoning when it is on:
docs/DESIGN.md, "HTTP front").

RESULT lines: tokens/s of each mode, cached_tokens over prompt tokens of
each, and the stateless/session ratios (goals: throughput within 10%, cache
hits within 5%). --rounds N interleaves the modes N times and keeps each
mode's best round (a shared machine).
"""
import argparse
import os
import random
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                "tests", "http"))
import test_http as t  # noqa: E402  (the Daemon helper)

WORDS = ("tool result file line error build test patch diff function value return "
         "config path status output input check run step plan next done").split()


def play(d, name, stateless, sid, turns, append, gen, out):
    c = d.client()
    rnd = random.Random(sid)
    history = []
    prompt = cached = done = 0
    for k in range(turns):
        user = {"role": "user", "content": " ".join(rnd.choice(WORDS) for _ in range(append))}
        history.append(user)
        kw = {"thinking": {"type": "disabled"}}
        if stateless:
            kw["cache_salt"] = "s%d" % sid
            msgs = history
        else:
            kw["session_id"] = "bench-%d" % sid
            msgs = [user]
        r = c.chat.completions.create(model=name, messages=msgs, max_tokens=gen, temperature=0,
                                      extra_body=kw)
        m = r.choices[0].message
        history.append({"role": "assistant", "content": m.content})
        if k:  # turn 0 has nothing to reuse in either mode
            prompt += r.usage.prompt_tokens
            cached += r.usage.prompt_tokens_details.cached_tokens
        done += r.usage.completion_tokens
    out.append((prompt, cached, done))


def run_mode(a, stateless):
    d = t.Daemon(model=a.model)
    try:
        name = d.client().models.list().data[0].id
        res = []
        th = [threading.Thread(target=play, args=(d, name, stateless, s, a.turns, a.append,
                                                  a.gen, res)) for s in range(a.sessions)]
        t0 = time.perf_counter()
        for x in th:
            x.start()
        for x in th:
            x.join()
        wall = time.perf_counter() - t0
        m = d.metrics()
    finally:
        d.stop()
    assert len(res) == a.sessions, "a client thread failed"
    prompt = sum(r[0] for r in res)
    cached = sum(r[1] for r in res)
    gen = sum(r[2] for r in res)
    return {"wall": wall, "tok_s": gen / wall, "prompt": prompt, "cached": cached,
            "hit": cached / max(prompt, 1),
            "replayed": m.get("dualpath_http_replayed_turns_total", 0)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=4)
    ap.add_argument("--turns", type=int, default=6)
    ap.add_argument("--append", type=int, default=24, help="words per user message")
    ap.add_argument("--gen", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--model", default=os.environ.get("DP_TEST_CHAT_MODEL", ""))
    a = ap.parse_args()
    if not os.path.isdir(a.model):
        sys.exit("--model (or DP_TEST_CHAT_MODEL): a V4-format model directory is needed")
    best = {}
    for _ in range(a.rounds):
        for mode in ("session", "stateless"):
            r = run_mode(a, mode == "stateless")
            print("  %-9s wall %.2fs  %.1f tok/s  cached %d of %d prompt tokens (%.1f%%)  "
                  "replayed turns %d" % (mode, r["wall"], r["tok_s"], r["cached"], r["prompt"],
                                         100 * r["hit"], r["replayed"]), flush=True)
            if mode not in best or r["tok_s"] > best[mode]["tok_s"]:
                best[mode] = r
    s, x = best["session"], best["stateless"]
    for mode, r in (("session", s), ("stateless", x)):
        print("RESULT agentic-http-%s tok_s=%.2f cached_tokens=%d prompt_tokens=%d hit=%.4f" % (
            mode, r["tok_s"], r["cached"], r["prompt"], r["hit"]))
    print("RESULT agentic-http-stateless-vs-session throughput_ratio=%.3f cached_ratio=%.3f "
          "(goals: >= 0.90, >= 0.95)" % (x["tok_s"] / s["tok_s"], x["cached"] / max(s["cached"], 1)))


if __name__ == "__main__":
    main()
