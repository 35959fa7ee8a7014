#!/usr/bin/env python3
"""Train dualpathd's embedded default model: a small byte-level DeepSeek-V4.

The model is Hugging Face transformers' DeepseekV4ForCausalLM (5.17) with every
V4 feature switched on at a size that plain C runs quickly on one CPU core:
sliding, compressed-sparse (CSA + lightning indexer) and heavily-compressed
(HCA) attention layers, hash-MoE and top-k MoE layers, mHC with hc_mult = 2.
It is trained on the Jargon File 4.4.7 (public domain; Debian package
`jargon-text`) and saved, in bf16, to model/embedded/:

  config.json          the DeepseekV4Config
  model.safetensors    every floating tensor bf16; hash-router tables int64
  README.md            what it is, the text and its licence, the run, losses,
                       generated samples (transformers' generate)
  train.log            one line per evaluation, and the final summary

Tokens are bytes: ids 0..255 are the bytes 0x00..0xff, then 256 = BOS,
257 = EOS, 258 = PAD; vocab_size = 259 (model/tokenizer.h, byte tokenizer
with 3 specials). Every Jargon File entry (or front-matter chapter) is one
document, BOS + UTF-8-free ASCII text + EOS; documents are concatenated and
training samples are random windows of that stream. Every 20th document is
held out for validation.

Loss is reported in bits per byte (bpb): mean next-token cross-entropy / ln 2
over byte targets (BOS/EOS targets count as one byte each).

The learning rate follows a cosine from --lr to --lr * --min-lr-frac after a
linear warmup; the schedule runs on wall time (--minutes) unless --steps is
given. The top-k MoE layers balance their experts the auxiliary-loss-free way
(DeepSeek-V3): after each step, e_score_correction_bias moves by --bias-rate
towards equal load. The lightning indexer gets no gradient through its top-k, so
it is trained as DeepSeek-V3.2 trains it: a KL loss pulls its softmax over the
compressed entries towards the main attention's (IndexerDistill).

Usage (what model/embedded/ was made with is in its README):
  nohup python3 scripts/train_embedded.py --minutes 95 > /tmp/train_embedded.log 2>&1 &
  python3 scripts/train_embedded.py --device cuda --minutes 5
  python3 scripts/train_embedded.py --bench 60      # throughput only, saves nothing
"""

import argparse
import gzip
import json
import math
import os
import platform
import random
import re
import sys
import tempfile
import time

import torch
import transformers
from safetensors.torch import save_file
from transformers import DeepseekV4Config, DeepseekV4ForCausalLM
from transformers.models.deepseek_v4 import modeling_deepseek_v4 as v4

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
DEFAULT_DATA = "/usr/share/doc/jargon-text/jargon.txt.gz"
DEFAULT_OUT = os.path.join(REPO, "model", "embedded")

BOS, EOS, PAD = 256, 257, 258
VOCAB = 259

# ---------------------------------------------------------------------------------------------
# Model configuration. Every V4 feature is present; compress rates are small so that they
# matter at short contexts (a 512-token context makes 128 CSA entries, more than index_topk).
# ---------------------------------------------------------------------------------------------
MODEL = {
    "vocab_size": VOCAB,
    "bos_token_id": BOS,
    "eos_token_id": EOS,
    "pad_token_id": PAD,
    "hidden_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 1,
    "head_dim": 64,
    "partial_rotary_factor": 0.25,  # rope on the trailing 16 of 64 channels
    "q_lora_rank": 128,
    "o_groups": 2,
    "o_lora_rank": 128,
    "moe_intermediate_size": 96,
    "n_routed_experts": 8,
    "num_experts_per_tok": 2,
    "n_shared_experts": 1,
    "scoring_func": "sqrtsoftplus",
    "routed_scaling_factor": 1.5,
    "norm_topk_prob": True,
    "swiglu_limit": 10.0,
    "layer_types": [
        "sliding_attention",
        "compressed_sparse_attention",
        "heavily_compressed_attention",
        "compressed_sparse_attention",
    ],
    "mlp_layer_types": ["hash_moe", "hash_moe", "moe", "moe"],
    "compress_rates": {"compressed_sparse_attention": 4, "heavily_compressed_attention": 16},
    "sliding_window": 64,
    "index_n_heads": 8,
    "index_head_dim": 32,
    "index_topk": 16,
    "hc_mult": 2,
    "hc_sinkhorn_iters": 20,
    "hc_eps": 1e-6,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "compress_rope_theta": 160000.0,
    "max_position_embeddings": 65536,
    "initializer_range": 0.02,
    "tie_word_embeddings": False,
}

# Unicode punctuation the text uses, mapped to ASCII; lines left with any other
# non-ASCII character (box-drawing tables, a few accented names) are dropped.
ASCII_MAP = {
    "\u201c": '"', "\u201d": '"', "\u2018": "'", "\u2019": "'", "\u00b4": "'",
    "\u2014": "--", "\u2013": "-", "\u2212": "-", "\u00b7": "-", "\u00a0": " ",
    "\u2022": "*", "\u2192": "->", "\u00a9": "(c)", "\u00d7": "x", "\u2122": "(tm)",
}


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------
def load_documents(path):
    """Return the Jargon File as a list of ASCII documents (entries / chapters)."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        raw = f.read()

    # Paragraphs: runs of non-blank lines; box-drawing / non-ASCII lines dropped.
    paras, cur = [], []
    for line in raw.split("\n"):
        for k, v in ASCII_MAP.items():
            line = line.replace(k, v)
        if not line.strip():
            if cur:
                paras.append(cur)
                cur = []
            continue
        if any(ord(c) > 126 or (ord(c) < 32 and c != "\t") for c in line):
            continue
        cur.append(line)
    if cur:
        paras.append(cur)

    # Tables of contents are long runs of one-line, short paragraphs: drop runs of >= 4.
    short = [len(p) == 1 and len(p[0].strip()) <= 48 for p in paras]
    keep = [True] * len(paras)
    i = 0
    while i < len(paras):
        if short[i]:
            j = i
            while j < len(paras) and short[j]:
                j += 1
            if j - i >= 4:
                for k in range(i, j):
                    keep[k] = False
            i = j
        else:
            i += 1

    # Reflow each paragraph onto one line, whitespace collapsed; an entry
    # (":headword: ...") starts a new document, as does a chapter title.
    docs, cur = [], []
    for p, k in zip(paras, keep):
        if not k:
            continue
        text = re.sub(r"\s+", " ", " ".join(s.strip() for s in p)).strip()
        if not text:
            continue
        starts_entry = text.startswith(":") and text.find(":", 1) > 1
        centered = p[0].startswith(" " * 10)  # chapter titles are centred
        if (starts_entry or centered) and cur:
            docs.append("\n".join(cur))
            cur = []
        cur.append(text)
    if cur:
        docs.append("\n".join(cur))
    return docs


def to_stream(docs):
    ids = []
    for d in docs:
        ids.append(BOS)
        ids.extend(d.encode("ascii"))
        ids.append(EOS)
    return torch.tensor(ids, dtype=torch.long)


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------
def build_model(seed, device):
    cfg = DeepseekV4Config(**MODEL)
    cfg._attn_implementation = "eager"
    cfg._experts_implementation = "eager"
    torch.manual_seed(seed)
    model = DeepseekV4ForCausalLM(cfg)
    # Hash routing table: a fixed, seeded choice of distinct experts per token id
    # (the checkpoint's tid2eid; zeros by default, which would route every token
    # to expert 0).
    gen = torch.Generator().manual_seed(seed + 1)
    k, e = cfg.num_experts_per_tok, cfg.n_routed_experts
    table = torch.stack([torch.randperm(e, generator=gen)[:k] for _ in range(cfg.vocab_size)])
    for layer in model.model.layers:
        if layer.mlp.is_hash:
            layer.mlp.gate.tid2eid.copy_(table)
    # The indexer starts at 1/sqrt(fan_in) rather than initializer_range: at
    # 0.02 its scores are ~1e-2 and mostly exactly 0 (every head's ReLU off),
    # so its top-k is decided by ties and rounding. Distillation (below)
    # trains it from there.
    with torch.no_grad():
        for layer in model.model.layers:
            comp = layer.self_attn.compressor
            if comp is not None and hasattr(comp, "indexer"):
                idx = comp.indexer
                for lin in (idx.kv_proj, idx.gate_proj, idx.q_b_proj, idx.scorer.weights_proj):
                    lin.weight.normal_(0.0, lin.weight.shape[1] ** -0.5, generator=gen)
    return cfg, model.to(device)


def count_params(model):
    return sum(p.numel() for p in model.parameters())


def bf16_state_dict(model):
    """Every floating tensor as bf16 (integer buffers as they are), on the CPU."""
    out = {}
    for name, t in model.state_dict().items():
        if "rotary_emb" in name:  # non-persistent in the reference; recomputed from config
            continue
        t = t.detach().to("cpu")
        out[name] = t.to(torch.bfloat16).contiguous() if t.is_floating_point() else t.contiguous()
    return out


def save_model(model, cfg, out_dir):
    """Write config.json and model.safetensors atomically into out_dir."""
    os.makedirs(out_dir, exist_ok=True)
    sd = bf16_state_dict(model)
    # Sanity: the saved names are exactly the persistent state of a fresh model.
    fd, tmp = tempfile.mkstemp(dir=out_dir, suffix=".tmp")
    os.close(fd)
    save_file(sd, tmp, metadata={"format": "pt"})
    os.chmod(tmp, 0o644)
    os.replace(tmp, os.path.join(out_dir, "model.safetensors"))
    c = cfg.to_dict()
    c["dtype"] = "bfloat16"
    c["architectures"] = ["DeepseekV4ForCausalLM"]
    c.pop("_experts_implementation", None)
    c.pop("_attn_implementation", None)
    fd, tmp = tempfile.mkstemp(dir=out_dir, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(c, f, indent=2, sort_keys=True)
        f.write("\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, os.path.join(out_dir, "config.json"))


def load_bf16_copy(out_dir, device):
    """The saved model as transformers loads it (fp32 compute on bf16-rounded weights)."""
    m = DeepseekV4ForCausalLM.from_pretrained(out_dir, dtype=torch.float32)
    m.config._attn_implementation = "eager"
    m.config._experts_implementation = "eager"
    return m.to(device).eval()


# ---------------------------------------------------------------------------------------------
# Training helpers
# ---------------------------------------------------------------------------------------------
def get_batch(stream, batch, seq_len, gen, device):
    starts = torch.randint(0, stream.numel() - seq_len - 1, (batch,), generator=gen)
    x = torch.stack([stream[s : s + seq_len + 1] for s in starts.tolist()])
    return x[:, :-1].to(device), x[:, 1:].to(device)


@torch.no_grad()
def evaluate(model, windows, device, batch):
    """Mean loss in nats per byte over fixed windows."""
    model.eval()
    total, n = 0.0, 0
    for i in range(0, windows.shape[0], batch):
        w = windows[i : i + batch].to(device)
        logits = model(input_ids=w[:, :-1], use_cache=False).logits.float()
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), w[:, 1:].reshape(-1), reduction="sum"
        )
        total += loss.item()
        n += w[:, 1:].numel()
    model.train()
    return total / n


def fixed_windows(stream, seq_len, count, seed):
    gen = torch.Generator().manual_seed(seed)
    count = min(count, max(1, (stream.numel() - 1) // (seq_len + 1)))
    # evenly spread, with a seeded jitter, so the set covers the whole slice
    stride = (stream.numel() - seq_len - 1) // count
    starts = [i * stride + int(torch.randint(0, max(1, stride), (1,), generator=gen)) for i in range(count)]
    return torch.stack([stream[s : s + seq_len + 1] for s in starts])


def lr_at(progress, args):
    warm = args.warmup_frac
    if progress < warm:
        return args.lr * max(progress / warm, 0.01)
    p = min(1.0, (progress - warm) / max(1e-9, 1.0 - warm))
    lo = args.lr * args.min_lr_frac
    return lo + 0.5 * (args.lr - lo) * (1.0 + math.cos(math.pi * p))


def make_optimizer(model, args):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim >= 2 and "embed" not in name and "hc" not in name else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": args.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95), eps=1e-8)


class ExpertLoad:
    """Counts top-k router choices per MoE layer, for aux-loss-free balancing."""

    def __init__(self, model):
        self.routers = []
        self.counts = []
        for layer in model.model.layers:
            if not layer.mlp.is_hash:
                r = layer.mlp.gate
                c = torch.zeros(r.num_experts, device=r.weight.device)
                self.routers.append(r)
                self.counts.append(c)
                r.register_forward_hook(self._hook(len(self.counts) - 1))

    def _hook(self, i):
        def hook(module, inputs, output):
            if module.training:
                idx = output[2].reshape(-1)
                self.counts[i] += torch.bincount(idx, minlength=module.num_experts).float()

        return hook

    @torch.no_grad()
    def update(self, rate):
        """Move each bias towards equal load; return the max/mean load ratio."""
        worst = 1.0
        for r, c in zip(self.routers, self.counts):
            if c.sum() > 0:
                r.e_score_correction_bias += rate * torch.sign(c.mean() - c)
                worst = max(worst, (c.max() / c.mean()).item())
            c.zero_()
        return worst


class IndexerDistill:
    """Trains the lightning indexers, which the LM loss cannot reach (their top-k has no
    gradient), by DeepSeek-V3.2's indexer objective: the indexer's softmax over the
    compressed entries a query may see should match the main attention's distribution over
    those entries (here: dense, each head's softmax over the entries alone, averaged over
    heads, detached). The indexer's inputs are detached, so this loss trains the indexer
    only and the LM loss trains everything else; the forward pass is unchanged."""

    def __init__(self, model):
        self.sites = []
        for layer in model.model.layers:
            attn = layer.self_attn
            comp = attn.compressor
            if comp is None or not hasattr(comp, "indexer"):
                continue
            site = {"m": comp.compress_rate, "scaling": attn.scaling}
            self.sites.append(site)
            idx = comp.indexer
            orig = idx.forward

            def detached(hidden_states, q_residual, *a, _orig=orig, **kw):
                return _orig(hidden_states.detach(), q_residual.detach(), *a, **kw)

            idx.forward = detached
            attn.register_forward_pre_hook(self._grab_rope(site), with_kwargs=True)
            attn.q_b_norm.register_forward_hook(self._grab(site, "q", lambda o: o))
            comp.register_forward_hook(self._grab(site, "kv", lambda o: o[0]))
            idx.scorer.register_forward_hook(self._grab(site, "scores", lambda o: o))

    @staticmethod
    def _grab_rope(site):
        def hook(module, args, kwargs):
            if module.training:
                site["rope"] = kwargs["position_embeddings"]["compress"]
                site["pos"] = kwargs["position_ids"]

        return hook

    @staticmethod
    def _grab(site, key, pick):
        def hook(module, inputs, output):
            if module.training:
                site[key] = pick(output)

        return hook

    def loss(self):
        total = None
        for site in self.sites:
            if "scores" not in site:
                continue
            kv, scores = site["kv"], site["scores"]  # [B,1,T,d], [B,S,T]
            t = kv.shape[2]
            valid = torch.arange(t, device=kv.device) < ((site["pos"] + 1) // site["m"]).unsqueeze(-1)
            valid = valid.expand_as(scores)
            rows = valid.any(-1)
            if t and rows.any():
                with torch.no_grad():
                    cos, sin = site["rope"]
                    q = v4.apply_rotary_pos_emb(site["q"], cos, sin).float()  # [B,H,S,d]
                    logits = torch.matmul(q, kv.float().transpose(-1, -2)) * site["scaling"]
                    logits = logits.masked_fill(~valid.unsqueeze(1), float("-inf"))
                    target = torch.softmax(logits, dim=-1).nan_to_num(0.0).mean(1)  # [B,S,T]
                logq = torch.log_softmax(scores.float().masked_fill(~valid, float("-inf")), dim=-1)
                ce = -(target * logq.masked_fill(~valid, 0.0)).sum(-1)  # cross-entropy = KL + const
                ent = -(target * target.clamp_min(1e-30).log()).sum(-1)
                kl = (ce - ent)[rows].mean()
                total = kl if total is None else total + kl
            for k in ("q", "kv", "scores", "rope", "pos"):
                site.pop(k, None)
        return total


# ---------------------------------------------------------------------------------------------
# Samples
# ---------------------------------------------------------------------------------------------
PROMPTS = [":hacker: n.", "The Jargon File", ":kluge: /klooj/", "In the early days of Unix,"]


def encode(text):
    return [BOS] + list(text.encode("ascii"))


def decode(ids):
    return bytes(i for i in ids if i < 256).decode("ascii", errors="replace")


@torch.no_grad()
def samples(model, device, max_new, seed):
    out = []
    for prompt in PROMPTS:
        ids = torch.tensor([encode(prompt)], device=device)
        g = model.generate(
            ids, max_new_tokens=max_new, do_sample=False, eos_token_id=EOS, pad_token_id=PAD
        )
        greedy = decode(g[0, ids.shape[1] :].tolist())
        torch.manual_seed(seed)
        s = model.generate(
            ids, max_new_tokens=max_new, do_sample=True, temperature=0.8, top_k=40, top_p=0.95,
            eos_token_id=EOS, pad_token_id=PAD,
        )
        sampled = decode(s[0, ids.shape[1] :].tolist())
        out.append((prompt, greedy, sampled))
    return out


# ---------------------------------------------------------------------------------------------
# README
# ---------------------------------------------------------------------------------------------
def write_readme(out_dir, cfg, info, samp):
    c = {k: MODEL[k] for k in MODEL}
    lines = []
    lines.append("# dualpathd's embedded default model\n")
    lines.append(
        "A small byte-level model with the DeepSeek-V4 architecture (transformers' "
        "`DeepseekV4ForCausalLM`), trained from scratch on the Jargon File so that a fresh "
        "`dualpathd` with no `--model` serves something that writes words. It is tiny "
        f"({info['params']:,} parameters) and trained on {info['train_bytes'] / 1e6:.2f} MB of text: expect "
        "English-looking words and jargon-flavoured phrases, not sense.\n"
    )
    lines.append("## Files\n")
    lines.append("| file | holds |\n| --- | --- |")
    lines.append("| `config.json` | the `DeepseekV4Config` (transformers 5.17) |")
    lines.append(
        f"| `model.safetensors` | {info['file_bytes']:,} bytes; every floating tensor **bf16** "
        "(norms, mHC, sinks and position biases too), the hash-MoE `tid2eid` tables **int64**; "
        "no rotary buffers (recomputed from the config) |"
    )
    lines.append("| `train.log` | one line per evaluation and the final summary |")
    lines.append("")
    lines.append("## Tokens\n")
    lines.append(
        "Byte level: ids 0..255 are the bytes 0x00..0xff; then 256 = BOS, 257 = EOS, "
        "258 = PAD; `vocab_size` = 259 (`dp_tok_new_bytes` with 3 specials in "
        "`model/tokenizer.h`). Every training document is `BOS text EOS`; prompts should "
        "start with BOS, and generation should stop at EOS (the model emits it where an "
        "entry ends). PAD never occurs in training.\n"
    )
    lines.append("## Text and licence\n")
    lines.append(
        "The Jargon File, version 4.4.7 (29 Dec 2003), Eric S. Raymond (ed.), from Debian's "
        "`jargon-text` package (`/usr/share/doc/jargon-text/jargon.txt.gz`). Its copyright "
        "notice: *\"This document (the Jargon File) is in the public domain, to be freely "
        "used, shared, and modified.\"* Cite as \"Jargon File 4.4.7\".\n"
    )
    lines.append(
        "Preprocessing (`load_documents` in `scripts/train_embedded.py`): typographic "
        "quotes, dashes and a few symbols mapped to ASCII; lines still holding non-ASCII "
        "characters dropped (box-drawing tables, a few names); tables of contents (runs of "
        "four or more one-line short paragraphs) dropped; each paragraph reflowed onto one "
        "line with whitespace collapsed, paragraphs separated by `\\n`; each glossary entry "
        "(`:headword: ...`) or chapter is one document. "
        f"{info['n_docs']:,} documents, {info['train_bytes']:,} training tokens, "
        f"{info['val_bytes']:,} validation tokens (every 20th document held out).\n"
    )
    lines.append("## Configuration\n")
    lines.append(
        f"{info['params']:,} parameters ({info['params_no_embed']:,} without embedding and "
        "head). Everything V4 has, scaled down:\n"
    )
    lines.append("```json")
    lines.append(json.dumps(c, indent=1))
    lines.append("```\n")
    lines.append(
        "- layer 0 sliding-window only, layers 1 and 3 CSA (m = 4, lightning indexer with "
        f"top-{c['index_topk']}), layer 2 HCA (m = 16); a 512-token context gives "
        "128 CSA entries per CSA layer, so the indexer really selects;\n"
        "- layers 0-1 hash-routed MoE (`tid2eid` fixed, seeded, distinct experts per token), "
        "layers 2-3 top-2-of-8 MoE with a `sqrtsoftplus` router and "
        "aux-loss-free balancing of `e_score_correction_bias`;\n"
        "- mHC with 2 streams and 20 Sinkhorn iterations at every site;\n"
        "- the lightning indexer gets no gradient through its top-k, so it is trained by "
        "distillation as in DeepSeek-V3.2 (`IndexerDistill`: KL from the main attention's "
        "distribution over the visible compressed entries to the indexer's softmax, indexer "
        "inputs detached), starting from a 1/sqrt(fan_in) initialisation (at "
        "`initializer_range` its scores start near 1e-2 and mostly tied).\n"
    )
    lines.append(
        "**Indexer ties.** The indexer scores are sums of ReLUs, and training drives the "
        "entries a query does not need to exactly 0, so the top-k boundary often falls "
        "inside a run of equal (zero) scores. Which of them the reference picks is up to "
        "`torch.topk`, whose order among equal values is unspecified and changes with the "
        "number of entries: the same prompt run as one call and as chunks can differ there "
        "(logits by ~1e-2). A C implementation should break ties by the lower entry index "
        "and compare against a reference that does the same (e.g. a stable descending sort "
        "instead of `topk`), or skip positions whose boundary is tied.\n"
    )
    lines.append("## Training\n")
    lines.append("Command (from the repository root):\n")
    lines.append("```sh\n" + info["command"] + "\n```\n")
    lines.append(
        "(run in the background as `nohup <command> > /tmp/train_embedded.log 2>&1 &`; "
        "stdout has a line per 20 steps with the load balance (max/mean expert load) and "
        "the indexer KL.)\n"
    )
    rows = [
        ("device", info["device"]),
        ("torch / transformers", f"{torch.__version__} / {transformers.__version__}"),
        ("threads", str(info["threads"])),
        ("steps", f"{info['steps']:,}"),
        ("batch x sequence", f"{info['batch']} x {info['seq_len']}"),
        ("tokens seen", f"{info['tokens']:,} ({info['epochs']:.1f} passes over the training text)"),
        ("wall time", f"{info['minutes']:.1f} min ({info['tok_per_s']:,.0f} tokens/s)"),
        ("optimiser", info["optim"]),
        ("final train loss (last 200 steps, fp32 weights)", f"{info['train_bpb']:.3f} bits/byte"),
        ("final validation loss (saved bf16 weights)", f"{info['val_bpb']:.3f} bits/byte"),
    ]
    lines.append("| | |\n| --- | --- |")
    for k, v in rows:
        lines.append(f"| {k} | {v} |")
    lines.append("")
    lines.append("## Samples\n")
    lines.append(
        "From the saved bf16 weights with transformers' `generate`, prompt = BOS + the text "
        f"shown, {info['sample_tokens']} new tokens at most. *greedy*: `do_sample=False`; "
        f"*sampled*: temperature 0.8, top-k 40, top-p 0.95, `torch.manual_seed({info['seed']})`.\n"
    )
    for prompt, greedy, sampled in samp:
        lines.append(f"**{prompt!r}**\n")
        lines.append("greedy:\n\n```text\n" + prompt + greedy + "\n```\n")
        lines.append("sampled:\n\n```text\n" + prompt + sampled + "\n```\n")
    with open(os.path.join(out_dir, "README.md"), "w") as f:
        f.write("\n".join(lines))


# ---------------------------------------------------------------------------------------------
def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--minutes", type=float, default=90.0, help="wall-time budget for training")
    ap.add_argument("--steps", type=int, default=0, help="step budget (overrides --minutes)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--min-lr-frac", type=float, default=0.05)
    ap.add_argument("--warmup-frac", type=float, default=0.02)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--bias-rate", type=float, default=5e-3, help="expert-bias balancing step")
    ap.add_argument("--indexer-weight", type=float, default=1.0, help="weight of the indexer KL loss")
    ap.add_argument("--eval-minutes", type=float, default=5.0, help="evaluate and checkpoint this often")
    ap.add_argument("--eval-windows", type=int, default=64)
    ap.add_argument("--sample-tokens", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--bench", type=float, default=0.0, help="measure throughput for N seconds; save nothing")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    random.seed(args.seed)

    docs = load_documents(args.data)
    val_docs = docs[19::20]
    train_docs = [d for i, d in enumerate(docs) if i % 20 != 19]
    train = to_stream(train_docs)
    val = to_stream(val_docs)
    cfg, model = build_model(args.seed, device)
    params = count_params(model)
    embed = model.model.embed_tokens.weight.numel() + model.lm_head.weight.numel()
    print(
        f"data: {len(docs)} docs, train {train.numel():,} tokens, val {val.numel():,} tokens; "
        f"model {params:,} params ({params - embed:,} w/o embed/head), "
        f"bf16 ~{params * 2 / 1e6:.2f} MB; device {device}, threads {torch.get_num_threads()}",
        flush=True,
    )

    opt = make_optimizer(model, args)
    load = ExpertLoad(model)
    distill = IndexerDistill(model)
    gen = torch.Generator().manual_seed(args.seed)
    val_windows = fixed_windows(val, args.seq_len, args.eval_windows, args.seed)
    train_windows = fixed_windows(train, args.seq_len, args.eval_windows, args.seed + 7)
    use_amp = device.type == "cuda"

    log_path = None if args.bench else os.path.join(args.out, "train.log")
    if log_path:
        os.makedirs(args.out, exist_ok=True)
        with open(log_path, "w") as f:
            f.write(f"# {' '.join(sys.argv)}\n# {params:,} params, device {device}\n")

    def log(line):
        print(line, flush=True)
        if log_path:
            with open(log_path, "a") as f:
                f.write(line + "\n")

    budget_s = args.bench if args.bench else args.minutes * 60.0
    t0 = time.time()
    next_eval = args.eval_minutes * 60.0
    step, tokens = 0, 0
    recent = []
    model.train()
    while True:
        elapsed = time.time() - t0
        progress = step / args.steps if args.steps else elapsed / budget_s
        if progress >= 1.0:
            break
        lr = lr_at(progress, args)
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = get_batch(train, args.batch, args.seq_len, gen, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            logits = model(input_ids=x, use_cache=False).logits
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, VOCAB), y.reshape(-1))
        ikl = distill.loss()
        opt.zero_grad(set_to_none=True)
        (loss + args.indexer_weight * ikl if ikl is not None else loss).backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        opt.step()
        imbalance = load.update(args.bias_rate)
        step += 1
        tokens += x.numel()
        recent.append(loss.item())
        recent = recent[-200:]
        if step % 20 == 0 or step <= 5:
            el = time.time() - t0
            print(
                f"step {step} {el / 60:.1f}min loss {loss.item() / math.log(2):.3f}bpb "
                f"avg {sum(recent) / len(recent) / math.log(2):.3f} lr {lr:.2e} gnorm {gnorm:.2f} "
                f"load {imbalance:.2f} idx-kl {ikl.item() if ikl is not None else 0:.3f} "
                f"{tokens / el:,.0f} tok/s",
                flush=True,
            )
        if not args.bench and time.time() - t0 >= next_eval:
            next_eval += args.eval_minutes * 60.0
            v = evaluate(model, val_windows, device, args.batch) / math.log(2)
            t = evaluate(model, train_windows, device, args.batch) / math.log(2)
            el = time.time() - t0
            log(
                f"eval step {step} {el / 60:.1f}min tokens {tokens:,} lr {lr:.2e} "
                f"train {t:.3f}bpb val {v:.3f}bpb {tokens / el:,.0f} tok/s"
            )
            save_model(model, cfg, args.out)

    el = time.time() - t0
    print(f"done: {step} steps, {tokens:,} tokens, {el / 60:.1f} min, {tokens / el:,.0f} tok/s", flush=True)
    if args.bench:
        return

    save_model(model, cfg, args.out)
    saved = load_bf16_copy(args.out, device)
    full_val = fixed_windows(val, args.seq_len, 10**9, args.seed)  # the whole slice
    v = evaluate(saved, full_val, device, args.batch) / math.log(2)
    train_bpb = sum(recent) / len(recent) / math.log(2)
    log(f"final step {step} {el / 60:.1f}min tokens {tokens:,} train(last200) {train_bpb:.3f}bpb "
        f"val(bf16, {full_val.shape[0]} windows) {v:.3f}bpb")
    samp = samples(saved, device, args.sample_tokens, args.seed)
    for p, g, s in samp:
        print(f"--- {p!r}\n greedy: {p + g!r}\nsampled: {p + s!r}", flush=True)
    dev = str(device)
    if device.type == "cpu":
        dev = f"cpu ({platform.processor() or platform.machine()})"
    elif device.type == "cuda":
        dev = torch.cuda.get_device_name(device)
    info = {
        "params": params,
        "params_no_embed": params - embed,
        "file_bytes": os.path.getsize(os.path.join(args.out, "model.safetensors")),
        "n_docs": len(docs),
        "train_bytes": train.numel(),
        "val_bytes": val.numel(),
        "command": "python3 " + " ".join([os.path.relpath(sys.argv[0], REPO)] + sys.argv[1:]),
        "device": dev,
        "threads": torch.get_num_threads(),
        "steps": step,
        "batch": args.batch,
        "seq_len": args.seq_len,
        "tokens": tokens,
        "epochs": tokens / train.numel(),
        "minutes": el / 60,
        "tok_per_s": tokens / el,
        "optim": (
            f"AdamW (0.9, 0.95), lr {args.lr:g} cosine to {args.lr * args.min_lr_frac:g} after "
            f"{args.warmup_frac:.0%} warmup, weight decay {args.weight_decay:g} on matrices, "
            f"clip {args.clip:g}; fp32{' + bf16 autocast' if use_amp else ''}"
        ),
        "train_bpb": train_bpb,
        "val_bpb": v,
        "sample_tokens": args.sample_tokens,
        "seed": args.seed,
    }
    write_readme(args.out, cfg, info, samp)


if __name__ == "__main__":
    main()
