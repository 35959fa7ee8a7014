#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""
tests/tok/gen_unicode.py — which code points HF `tokenizers` puts in each
character class the byte-level BPE pre-tokenizers use; writes
tests/tok/data/unicode-classes.txt and tok/unicode-fix.h, committed.

`tokenizers` 0.23's Oniguruma has Unicode 16; Debian 12's PCRE2 10.42 has
Unicode 14, and counts U+180E as \s. So tok/regex.c does not hand \p{X} and
\s to PCRE2 as they are: \p{X} gets the code points PCRE2 lacks added
(unicode-fix.h, computed here by running the system's libpcre2-8 through
ctypes) and \s becomes Oniguruma's list. tests/tok/test_unicode.c checks
that the rewritten classes hold exactly the same code points as here.

`tokenizers` (PyPI wheels) runs Split/ByteLevel regexes with Oniguruma (the
`onig` feature, its default) and Digits with Rust's char::is_numeric, so
those are what is enumerated here: every Unicode scalar value (no
surrogates: a Rust &str cannot hold one) in one string, split by each
pattern with behaviour "removed" (what is left is what the class lacks).

Run: /tmp/v4venv/bin/python tests/tok/gen_unicode.py  (tokenizers 0.23.x)
Line format: NAME<TAB>PCRE2-PATTERN<TAB>first-last,first-last,... (hex)
"""
import ctypes
import os
import tokenizers
from tokenizers import Regex, pre_tokenizers

CLASSES = [
    ("N", r"\p{N}"),
    ("L", r"\p{L}"),
    ("M", r"\p{M}"),
    ("P", r"\p{P}"),
    ("S", r"\p{S}"),
    ("space", r"\s"),
    ("LM", r"[\p{L}\p{M}]"),
    ("PS", r"[\p{P}\p{S}]"),
    ("notLPS", r"[^\r\n\p{L}\p{P}\p{S}]"),
    ("notspaceLN", r"[^\s\p{L}\p{N}]"),
    ("cjk", "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]"),
    ("ascii_alpha", r"[A-Za-z]"),
    ("ascii_punct", r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~]"),
]

CPS = [c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
TEXT = "".join(map(chr, CPS))


def ranges(members):
    out, start, prev = [], None, None
    for c in sorted(members):
        if start is None:
            start = prev = c
        elif c == prev + 1:
            prev = c
        else:
            out.append((start, prev))
            start = prev = c
    if start is not None:
        out.append((start, prev))
    return ",".join("%x-%x" % r for r in out)


def removed_class(pattern):
    split = pre_tokenizers.Split(Regex(pattern), behavior="removed")
    kept = set()
    for _, (s, e) in split.pre_tokenize_str(TEXT):
        kept.update(CPS[s:e])
    return set(CPS) - kept


def numeric_class():
    # Digits(individual_digits=False) alternates numeric and other runs;
    # U+0000 is not numeric, so the odd-numbered runs are the numeric ones.
    pieces = pre_tokenizers.Digits(individual_digits=False).pre_tokenize_str(TEXT)
    members = set()
    for i, (_, (s, e)) in enumerate(pieces):
        if i % 2 == 1:
            members.update(CPS[s:e])
    return members


lib = ctypes.CDLL("libpcre2-8.so.0")
lib.pcre2_compile_8.restype = ctypes.c_void_p
lib.pcre2_compile_8.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint32, ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_size_t), ctypes.c_void_p]
lib.pcre2_match_data_create_8.restype = ctypes.c_void_p
lib.pcre2_match_data_create_8.argtypes = [ctypes.c_uint32, ctypes.c_void_p]
lib.pcre2_match_8.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_uint32, ctypes.c_void_p, ctypes.c_void_p]
lib.pcre2_get_ovector_pointer_8.restype = ctypes.POINTER(ctypes.c_size_t)
lib.pcre2_get_ovector_pointer_8.argtypes = [ctypes.c_void_p]
lib.pcre2_config_8.argtypes=[ctypes.c_uint32, ctypes.c_void_p]
UTF, UCP = 0x00080000, 0x00020000
def pcre2_set(pattern):
    e = ctypes.c_int(); o = ctypes.c_size_t()
    p = pattern.encode()
    re = lib.pcre2_compile_8(p, len(p), UTF | UCP, ctypes.byref(e), ctypes.byref(o), None)
    assert re, pattern
    md = lib.pcre2_match_data_create_8(1, None)
    out = set()
    # match each code point alone (slow-ish but simple): batch in one string
    cps = [c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    text = "".join(map(chr, cps)).encode()
    starts = {}
    pos = 0
    for c in cps:
        starts[pos] = c
        pos += len(chr(c).encode())
    pos = 0
    while lib.pcre2_match_8(re, text, len(text), pos, 0x40000000, md, None) > 0:
        ov = lib.pcre2_get_ovector_pointer_8(md)
        out.add(starts[ov[0]]); pos = ov[1]
    return out


def c_ranges(members):
    """PCRE2 class items for a set of code points."""
    out = []
    for part in ranges(members).split(","):
        if not part:
            continue
        lo, hi = part.split("-")
        out.append("\\\\x{%s}" % lo if lo == hi else "\\\\x{%s}-\\\\x{%s}" % (lo, hi))
    return out


def write_header(onig_sets):
    """tok/unicode-fix.h: what tok/regex.c adds to PCRE2's \\p{X} so that it
    is Oniguruma's, and Oniguruma's \\s outright."""
    buf = ctypes.create_string_buffer(64)
    lib.pcre2_config_8(10, buf)  # PCRE2_CONFIG_UNICODE_VERSION
    lines = ["/* SPDX-License-Identifier: MIT */",
             "/* Generated by tests/tok/gen_unicode.py from tokenizers %s (Oniguruma) and PCRE2"
             % tokenizers.__version__,
             " * with Unicode %s: the code points Oniguruma has in each general category" % buf.value.decode(),
             " * and PCRE2 lacks (PCRE2 has none that Oniguruma lacks: the script checks), and",
             " * Oniguruma's \\s. tests/tok/test_unicode.c checks the result on every code point. */",
             "#ifndef DP_TOK_UNICODE_FIX_H", "#define DP_TOK_UNICODE_FIX_H", ""]
    for cat in "LMNPS":
        pat, onig = onig_sets[cat]
        mine = pcre2_set(pat)
        assert not (mine - onig), "PCRE2 has code points in %s that Oniguruma lacks" % cat
        items = c_ranges(onig - mine)
        lines.append("#define DP_BPE_ADD_%s \\" % cat)
        for i in range(0, len(items), 6):
            lines.append('\t"%s"%s' % ("".join(items[i:i + 6]), " \\" if i + 6 < len(items) else ""))
        if not items:
            lines.append('\t""')
        lines.append("")
    # Digits uses Rust's char::is_numeric, whose tables are newer still
    digits = onig_sets["digits"][1]
    mine = pcre2_set(r"\p{N}")
    assert not (mine - digits), "PCRE2 has numeric code points that Rust lacks"
    items = c_ranges(digits - mine)
    lines.append("/* Rust's char::is_numeric, for the Digits pre-tokenizer */")
    lines.append('#define DP_BPE_DIGITS_CLASS "[\\\\p{N}%s]"' % "".join(items))
    lines.append("")
    items = c_ranges(onig_sets["space"][1])
    lines.append('#define DP_BPE_SPACE "%s"' % "".join(items))
    lines += ["", "#endif /* DP_TOK_UNICODE_FIX_H */", ""]
    with open(os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                           "tok", "unicode-fix.h"), "w") as f:
        f.write("\n".join(lines))


def main():
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "unicode-classes.txt")
    with open(out, "w", encoding="utf-8") as f:
        f.write("# tokenizers %s: Oniguruma classes (Split regexes) and Rust is_numeric (Digits)\n"
                % tokenizers.__version__)
        sets = {}
        for name, pat in CLASSES:
            sets[name] = (pat, removed_class(pat))
            f.write("%s\t%s\t%s\n" % (name, pat, ranges(sets[name][1])))
        sets["digits"] = (r"\p{N}", numeric_class())
        f.write("digits\t%s\t%s\n" % (r"\p{N}", ranges(sets["digits"][1])))
    write_header(sets)


if __name__ == "__main__":
    main()
