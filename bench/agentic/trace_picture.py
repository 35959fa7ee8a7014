#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""A picture of a dualpathd Chrome trace (`v4ctl trace --out F`, or the ones bench/agentic/run
writes with --out): the compute lane (steps, and the stalls where compute waited on I/O) above
the io lane (restores, loads, writebacks), over a window of time.

    python3 bench/agentic/trace_picture.py TRACE.json [--from-ms T] [--ms W] [--cols N]
                                          [--svg OUT.svg]

Prints the lanes as text, one character per 1/N of the window:
    '#' busy over most of the cell, '+' over part of it, '.' a sliver, ' ' idle;
    on the compute lane '!' marks a cell where a stall took most of the time, 'h' one where a
    hold did (no step ran: a returning session's state would have come late).
With --svg, also writes the same window as an SVG (opens in any browser): one bar per event,
steps blue, stalls red, holds orange, io events green, with a time axis in ms.

It also sums up the bytes in flight per class (restore, engram, expert, writeback: KiB issued to
the io thread and not done) that each step's "io" instant and each "stall" carry: mean and max
over the window, and the stalls by layer. In the SVG each io instant is a tick above the io lane
and each stall's bar has a tooltip with its layer and the same figures.

The default window starts 2 ms before the first io event and lasts --ms (default 100) ms:
the first restore is where the overlap shows. Standard library only.
"""
import argparse
import json
import sys


def load(path):
    with open(path) as f:
        d = json.load(f)
    events = d["traceEvents"] if isinstance(d, dict) else d
    names = {}
    for e in events:
        if e.get("ph") == "M" and e.get("name") == "thread_name":
            names[e.get("tid")] = e["args"]["name"]
    spans = [e for e in events if e.get("ph") == "X"]
    return names, spans


def lane_of(e, names):
    return "io" if names.get(e.get("tid"), "") == "io" or e.get("cat") == "io" else "compute"


def coverage(spans, t0, t1, cols):
    """Per column, the fraction of its time covered by spans (clipped)."""
    w = (t1 - t0) / cols
    cov = [0.0] * cols
    for s, e in spans:
        s, e = max(s, t0), min(e, t1)
        if e <= s:
            continue
        c0, c1 = int((s - t0) / w), min(cols - 1, int((e - t0) / w))
        for c in range(c0, c1 + 1):
            a, b = t0 + c * w, t0 + (c + 1) * w
            cov[c] += max(0.0, min(b, e) - max(a, s)) / w
    return [min(1.0, x) for x in cov]


CLASSES = ("restore", "engram", "expert", "writeback")


def in_flight(e):
    """The event's KiB in flight per class ({} when it carries none)."""
    a = e.get("args", {})
    # numbers, or strings of them (the agentic driver writes some so)
    return {k: int(a[f"{k}_kib_in_flight"]) for k in CLASSES if f"{k}_kib_in_flight" in a}


def summary(events):
    """'restore mean/max, ...' over the events' in-flight figures."""
    rows = [in_flight(e) for e in events]
    parts = []
    for k in CLASSES:
        v = [r[k] for r in rows if k in r]
        if v:
            parts.append(f"{k} {sum(v) / len(v):.0f}/{max(v)}")
    return ", ".join(parts) if parts else "none recorded"


def glyph(x):
    return "#" if x >= 0.6 else "+" if x >= 0.25 else "." if x > 0.0 else " "


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("trace")
    ap.add_argument("--from-ms", type=float)
    ap.add_argument("--ms", type=float, default=100.0)
    ap.add_argument("--cols", type=int, default=100)
    ap.add_argument("--svg")
    a = ap.parse_args()

    names, spans = load(a.trace)
    if not spans:
        sys.exit(f"{a.trace}: no complete ('X') events")
    io = [e for e in spans if lane_of(e, names) == "io"]
    if a.from_ms is not None:
        t0 = a.from_ms * 1000.0
    elif io:
        t0 = min(e["ts"] for e in io) - 2000.0
    else:
        t0 = min(e["ts"] for e in spans)
    t1 = t0 + a.ms * 1000.0
    lanes = {
        "compute": [(e["ts"], e["ts"] + e["dur"]) for e in spans
                    if lane_of(e, names) == "compute" and e["name"] not in ("stall", "hold")],
        "stall": [(e["ts"], e["ts"] + e["dur"]) for e in spans
                  if lane_of(e, names) == "compute" and e["name"] == "stall"],
        "hold": [(e["ts"], e["ts"] + e["dur"]) for e in spans
                 if lane_of(e, names) == "compute" and e["name"] == "hold"],
        "io": [(e["ts"], e["ts"] + e["dur"]) for e in io],
    }
    cov = {k: coverage(v, t0, t1, a.cols) for k, v in lanes.items()}
    comp = "".join("!" if st >= 0.5 else "h" if h >= 0.5 else glyph(c)
                   for c, st, h in zip(cov["compute"], cov["stall"], cov["hold"]))
    print(f"{a.trace}: {t0 / 1000:.1f} .. {t1 / 1000:.1f} ms, {a.ms / a.cols:.2f} ms a column")
    print(f"compute |{comp}|")
    print(f"io      |{''.join(glyph(x) for x in cov['io'])}|")
    busy = {k: sum(v) / a.cols for k, v in cov.items()}
    print(f"busy: compute {busy['compute']:.0%} (of it stalled {busy['stall']:.0%}), held {busy['hold']:.0%}, "
          f"io {busy['io']:.0%}; "
          f"overlap (both busy) {sum(min(c, i) for c, i in zip(cov['compute'], cov['io'])) / a.cols:.0%}")
    inside = [e for e in spans if t0 <= e["ts"] < t1]
    ios = [e for e in inside if e["name"] == "io"]
    stalls = [e for e in inside if e["name"] == "stall"]
    print(f"in flight as steps began, KiB mean/max ({len(ios)} steps): {summary(ios)}")
    layers = {}
    for e in stalls:
        layer = e.get("args", {}).get("layer")
        layers[layer] = layers.get(layer, 0) + 1
    by_layer = ", ".join(f"layer {k}: {v}" for k, v in sorted(layers.items(), key=lambda x: str(x[0])))
    print(f"stalls: {len(stalls)} ({by_layer or 'none'}); in flight at their end, KiB mean/max: "
          f"{summary(stalls)}")

    if a.svg:
        W, lane_h, top, left = 1000, 28, 24, 70
        sx = (W - left - 10) / (t1 - t0)
        out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{top + 2 * lane_h + 40}" '
               f'font-family="monospace" font-size="12">',
               f'<text x="4" y="{top + 18}">compute</text>',
               f'<text x="4" y="{top + lane_h + 18}">io</text>']
        colors = {"compute": "#4a78c2", "stall": "#d23a2a", "hold": "#e8a33a", "io": "#3a9a4a"}
        rows = {"compute": 0, "stall": 0, "hold": 0, "io": 1}
        for k, v in lanes.items():
            for s, e in v:
                s, e = max(s, t0), min(e, t1)
                if e <= s:
                    continue
                y = top + rows[k] * lane_h + 3
                out.append(f'<rect x="{left + (s - t0) * sx:.1f}" y="{y}" width="{max(0.5, (e - s) * sx):.1f}" '
                           f'height="{lane_h - 6}" fill="{colors[k]}"/>')
        # the figures each io instant and stall carry, as tooltips
        for e in ios + stalls:
            f = in_flight(e)
            if not f:
                continue
            text = ", ".join(f"{k} {v} KiB" for k, v in f.items())
            x = left + (max(e["ts"], t0) - t0) * sx
            if e["name"] == "io":
                out.append(f'<rect x="{x:.1f}" y="{top + lane_h}" width="1" height="4" fill="#000">'
                           f'<title>step start: {text}</title></rect>')
            else:
                w = max(0.5, (min(e["ts"] + e["dur"], t1) - max(e["ts"], t0)) * sx)
                out.append(f'<rect x="{x:.1f}" y="{top + 3}" width="{w:.1f}" height="{lane_h - 6}" '
                           f'fill-opacity="0"><title>stall at layer {e.get("args", {}).get("layer")}: '
                           f'{text}</title></rect>')
        axis_y = top + 2 * lane_h + 14
        for i in range(11):
            x = left + i * (W - left - 10) / 10
            out.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{axis_y - 10}" stroke="#ccc"/>')
            out.append(f'<text x="{x - 10:.1f}" y="{axis_y + 4}">{(t0 + i * (t1 - t0) / 10) / 1000:.0f}</text>')
        out.append(f'<text x="{W / 2 - 20}" y="{axis_y + 20}">ms</text></svg>')
        with open(a.svg, "w") as f:
            f.write("\n".join(out) + "\n")
        print(f"wrote {a.svg}")


if __name__ == "__main__":
    main()
