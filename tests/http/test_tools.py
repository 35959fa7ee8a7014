#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The tool round trip over HTTP (tool call -> tool result -> answer) through
the official openai SDK against the real dualpathd --http, on a V4-format
model whose output its weights choose (make_tool_model.py; DP_TEST_TOOL_MODEL
names the directory meson makes): asked a question with tools offered it
calls get_weather(city="Paris"); once the tool's result is in its prompt it
answers. In thinking mode a line of reasoning comes first each time.

What can fail here: the DSML the model writes must come out as an OpenAI
tool call (streamed and not); the client's stateless second request (the
whole history, the call sent back as received, a role "tool" message) must
render to the V4 prompt the model answers; and the unit left at the end of
the first reply must be hit, which needs the front's replay of the sampled
ids (the call re-tokenizes to other ids: a test with the replay cache off
shows the difference).
"""
import json
import os
import subprocess
import sys

from test_http import Daemon  # re-runs this script under DP_PYTHON where the SDK is
import openai  # noqa: E402 (after the re-run above)

MODEL = os.environ.get("DP_TEST_TOOL_MODEL", "")
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "The weather now in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}]
QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]
ARGS = '{"city": "Paris"}'  # encoding_dsv4's decode_dsml_to_arguments form
REASON_CALL = "The user asks for the weather in Paris; get_weather tells it."
REASON_ANSWER = "The tool has answered; I can reply."
ANSWER = "It is sunny in Paris, 22 degrees."
RESULT = "sunny, 22 degrees"
OFF = {"thinking": {"type": "disabled"}}
ON = {"thinking": {"type": "enabled"}}


def call_of(choice):
    m = choice.message
    assert choice.finish_reason == "tool_calls", choice
    assert m.tool_calls and len(m.tool_calls) == 1, m
    tc = m.tool_calls[0]
    assert tc.type == "function" and tc.id, tc
    assert (tc.function.name, tc.function.arguments) == ("get_weather", ARGS), tc.function
    assert not m.content, m
    return tc


def sent_back(msg):
    """The assistant message as a client sends it back: what it received."""
    out = {"role": "assistant", "content": msg.content,
           "tool_calls": [{"id": t.id, "type": "function",
                           "function": {"name": t.function.name,
                                        "arguments": t.function.arguments}}
                          for t in msg.tool_calls]}
    if getattr(msg, "reasoning_content", None):
        out["reasoning_content"] = msg.reasoning_content
    return out


def round_trip(c, name, mode, **extra):
    """Request 1 (the call) and request 2 (the answer), statelessly."""
    first = c.chat.completions.create(model=name, messages=QUESTION, tools=TOOLS, max_tokens=32,
                                      temperature=0, extra_body=dict(mode, **extra))
    tc = call_of(first.choices[0])
    history = QUESTION + [sent_back(first.choices[0].message),
                          {"role": "tool", "tool_call_id": tc.id, "content": RESULT}]
    second = c.chat.completions.create(model=name, messages=history, tools=TOOLS, max_tokens=32,
                                       temperature=0, extra_body=dict(mode, **extra))
    return first, second


def reply_end(first):
    """The state the prefix unit left at the end of the first reply holds:
    the prompt and every sampled token but the last (EOS was sampled, not yet
    fed through the model; the next request prefills from it)."""
    return first.usage.prompt_tokens + first.usage.completion_tokens - 1


def tool_call_comes_back_as_tool_calls_streamed_and_not(d, c, name):
    for mode in (OFF, ON):
        r = c.chat.completions.create(model=name, messages=QUESTION, tools=TOOLS, max_tokens=32,
                                      temperature=0, extra_body=mode)
        tc = call_of(r.choices[0])
        assert tc.id.startswith("call_"), tc.id
        reasoning = getattr(r.choices[0].message, "reasoning_content", None)
        assert reasoning == (REASON_CALL if mode is ON else None), reasoning
        # streamed: the tool_call deltas reassemble to the same call
        calls, finish, text, think = {}, None, "", ""
        for ch in c.chat.completions.create(model=name, messages=QUESTION, tools=TOOLS,
                                            max_tokens=32, temperature=0, stream=True,
                                            extra_body=mode):
            if not ch.choices:
                continue
            dl = ch.choices[0].delta
            finish = ch.choices[0].finish_reason or finish
            text += dl.content or ""
            think += getattr(dl, "reasoning_content", None) or ""
            for t in dl.tool_calls or []:
                e = calls.setdefault(t.index, {"id": "", "name": "", "arguments": ""})
                e["id"] += t.id or ""
                if t.function:
                    e["name"] += t.function.name or ""
                    e["arguments"] += t.function.arguments or ""
        assert finish == "tool_calls", finish
        assert list(calls) == [0] and calls[0]["name"] == "get_weather" and \
            calls[0]["arguments"] == ARGS and calls[0]["id"].startswith("call_"), calls
        assert not text, text
        assert think == (REASON_CALL if mode is ON else ""), think
        # the wire, as curl sees it: SSE tool_calls deltas, then [DONE]
        st, hd, body = d.curl("-N", "-H", "Content-Type: application/json", "-d",
                              json.dumps(dict(mode, model=name, messages=QUESTION, tools=TOOLS,
                                              max_tokens=32, temperature=0, stream=True)),
                              "/v1/chat/completions")
        assert st == 200 and hd["content-type"] == "text/event-stream", (st, hd)
        events = [e for e in body.split("\n\n") if e and not e.startswith(":")]
        assert events[-1] == "data: [DONE]", events[-3:]
        chunks = [json.loads(e[6:]) for e in events[:-1]]
        deltas = [t for ch in chunks for t in ch["choices"][0]["delta"].get("tool_calls", [])]
        assert deltas and deltas[0]["function"]["name"] == "get_weather", deltas
        assert "".join(t["function"].get("arguments", "") for t in deltas) == ARGS, deltas
        assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls", chunks[-1]


def tool_result_sent_back_statelessly_gets_the_answer_from_the_cache(d, c, name):
    for mode in (OFF, ON):
        first, second = round_trip(c, name, mode, cache_salt="rt-%s" % ("on" if mode is ON else "off"))
        ch = second.choices[0]
        assert ch.finish_reason == "stop", ch
        assert ch.message.content == ANSWER and not ch.message.tool_calls, ch.message
        reasoning = getattr(ch.message, "reasoning_content", None)
        assert reasoning == (REASON_ANSWER if mode is ON else None), reasoning
        cached = second.usage.prompt_tokens_details.cached_tokens
        print("     %s: first prompt %d + reply %d; second prompt %d, cached %d" % (
            "thinking" if mode is ON else "chat", first.usage.prompt_tokens,
            first.usage.completion_tokens, second.usage.prompt_tokens, cached))
        # the unit at the end of the reply: only the replayed call gets there
        assert cached >= reply_end(first), (reply_end(first), second.usage)
        assert cached < second.usage.prompt_tokens, second.usage
    m = d.metrics()
    assert m.get("dualpath_http_replayed_turns_total", 0) >= 2, m


def answer_streams_with_usage_and_sampling_keeps_the_chain(d, c, name):
    """The second request streamed (content deltas, the usage chunk's
    cached_tokens) and both at temperature 1: the chain's logit margins make
    the sampled text the greedy one."""
    first = c.chat.completions.create(model=name, messages=QUESTION, tools=TOOLS, max_tokens=32,
                                      temperature=1.0, seed=7, extra_body={"cache_salt": "st"})
    tc = call_of(first.choices[0])
    history = QUESTION + [sent_back(first.choices[0].message),
                          {"role": "tool", "tool_call_id": tc.id, "content": RESULT}]
    text, think, finish, usage = "", "", None, None
    for ch in c.chat.completions.create(model=name, messages=history, tools=TOOLS, max_tokens=32,
                                        temperature=1.0, seed=7, stream=True,
                                        stream_options={"include_usage": True},
                                        extra_body={"cache_salt": "st"}):
        if ch.usage:
            usage = ch.usage
        if not ch.choices:
            continue
        dl = ch.choices[0].delta
        assert not dl.tool_calls, dl
        text += dl.content or ""
        think += getattr(dl, "reasoning_content", None) or ""
        finish = ch.choices[0].finish_reason or finish
    assert (think, text, finish) == (REASON_ANSWER, ANSWER, "stop"), (think, text, finish)
    assert usage and usage.prompt_tokens_details.cached_tokens >= reply_end(first), usage


def messages_api_tool_use_round_trip(d, c, name):
    """The same through POST /v1/messages (Anthropic's form): a tool_use
    block with the parsed input, stop_reason tool_use (the unstreamed body
    once packed the block without its "input" key: a 500), streamed too; the
    tool_result sent back gets the answer as a text block."""
    tools = [{"name": "get_weather", "description": "The weather now in a city.",
              "input_schema": TOOLS[0]["function"]["parameters"]}]
    req = {"model": name, "max_tokens": 32, "temperature": 0, "tools": tools,
           "messages": [{"role": "user", "content": QUESTION[0]["content"]}]}
    r = d.http.post("/v1/messages", json=req)
    assert r.status_code == 200, r.text
    m = r.json()
    assert m["stop_reason"] == "tool_use", m
    uses = [b for b in m["content"] if b["type"] == "tool_use"]
    assert len(uses) == 1 and uses[0]["name"] == "get_weather" and \
        uses[0]["input"] == {"city": "Paris"} and uses[0]["id"].startswith("toolu_"), m
    # streamed: a tool_use block whose input_json_delta is the arguments
    started, partial, stop = [], "", None
    with d.http.stream("POST", "/v1/messages", json=dict(req, stream=True)) as s:
        for line in s.iter_lines():
            if not line.startswith("data: "):
                continue
            ev = json.loads(line[6:])
            if ev["type"] == "content_block_start":
                started.append(ev["content_block"]["type"])
            elif ev["type"] == "content_block_delta" and ev["delta"]["type"] == "input_json_delta":
                partial += ev["delta"]["partial_json"]
            elif ev["type"] == "message_delta":
                stop = ev["delta"]["stop_reason"]
    assert started == ["tool_use"] and json.loads(partial) == {"city": "Paris"}, (started, partial)
    assert stop == "tool_use", stop
    req["messages"] += [{"role": "assistant", "content": m["content"]},
                        {"role": "user", "content": [{"type": "tool_result",
                                                      "tool_use_id": uses[0]["id"],
                                                      "content": RESULT}]}]
    r = d.http.post("/v1/messages", json=req)
    assert r.status_code == 200, r.text
    m = r.json()
    assert m["stop_reason"] == "end_turn", m
    assert [b["text"] for b in m["content"] if b["type"] == "text"] == [ANSWER], m


def tool_result_with_the_replay_off_misses_the_reply_unit():
    """The control for the test above: with [http] replay_cache_bytes = 0 the
    call sent back is re-tokenized (the whole DSML parameter line is one
    added token where two were sampled), so the second request's cache hit
    stops inside the reply, and the answer is still right."""
    cfg = os.path.join(os.environ.get("TMPDIR", "/tmp"), "dp-tools-noreplay-%d.conf" % os.getpid())
    with open(cfg, "w") as f:
        f.write("[http]\nreplay_cache_bytes = 0\n")
    try:
        d = Daemon("--config", cfg, model=MODEL)
    finally:
        os.unlink(cfg)
    try:
        c = d.client()
        name = c.models.list().data[0].id
        first, second = round_trip(c, name, OFF)
        assert second.choices[0].message.content == ANSWER, second.choices[0]
        cached = second.usage.prompt_tokens_details.cached_tokens
        print("     replay off: first prompt %d + reply %d; second cached %d" % (
            first.usage.prompt_tokens, first.usage.completion_tokens, cached))
        # the re-rendered call parts from the sampled ids at its third token
        assert cached < first.usage.prompt_tokens + 2, (first.usage, second.usage)
    finally:
        d.stop()


def tool_round_trip_through_a_session_id(d, c, name):
    """An explicit session: the call is asked for in session tools-1. A tool
    result cannot continue it (the renderer needs the calls, which are in the
    session's context): a 400 naming the field. The whole conversation in a
    new session answers and reuses the unit tools-1 left at its reply's end."""
    first = c.chat.completions.create(model=name, messages=QUESTION, tools=TOOLS, max_tokens=32,
                                      temperature=0, extra_body=dict(OFF, session_id="tools-1"))
    tc = call_of(first.choices[0])
    result = {"role": "tool", "tool_call_id": tc.id, "content": RESULT}
    try:
        c.chat.completions.create(model=name, messages=[result], max_tokens=32, temperature=0,
                                  extra_body=dict(OFF, session_id="tools-1"))
        raise AssertionError("a tool result continued a session")
    except openai.BadRequestError as e:
        assert e.status_code == 400 and "messages[0]" in str(e.body), e.body
    history = QUESTION + [sent_back(first.choices[0].message), result]
    second = c.chat.completions.create(model=name, messages=history, tools=TOOLS, max_tokens=32,
                                       temperature=0, extra_body=dict(OFF, session_id="tools-2"))
    assert second.choices[0].message.content == ANSWER, second.choices[0]
    cached = second.usage.prompt_tokens_details.cached_tokens
    print("     session: first prompt %d + reply %d; second prompt %d, cached %d" % (
        first.usage.prompt_tokens, first.usage.completion_tokens, second.usage.prompt_tokens,
        cached))
    assert cached >= reply_end(first), (reply_end(first), second.usage)


def v4ctl_chat_shows_the_tool_call_line(d, c, name):
    """The socket front on the same model: v4ctl chat prints the call the
    daemon parsed as "[tool call NAME ARGS]" (chat mode), after the reasoning
    lines in thinking mode."""
    v4ctl = os.environ.get("V4CTL", "")
    if not os.path.exists(v4ctl):
        print("     (no V4CTL: v4ctl chat is not checked here)")
        return
    sock = os.path.join(d.dir, "s")
    for flags, want in [(["--no-thinking"], "[tool call get_weather %s]\n" % ARGS),
                        ([], "thinking> %s\n\n[tool call get_weather %s]\n" % (REASON_CALL, ARGS))]:
        r = subprocess.run([v4ctl, "--socket", sock, "chat", "-n", "16"] + flags,
                           input=QUESTION[0]["content"] + "\n", capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, (r.returncode, r.stderr)
        assert r.stdout == want, (r.stdout, want)


def main():
    if not os.path.isdir(MODEL):
        print("SKIP: DP_TEST_TOOL_MODEL is not a directory (meson makes tests/http/tool-model)")
        return 77
    failed = []
    d = Daemon(model=MODEL)
    tests = [tool_call_comes_back_as_tool_calls_streamed_and_not,
             tool_result_sent_back_statelessly_gets_the_answer_from_the_cache,
             answer_streams_with_usage_and_sampling_keeps_the_chain,
             tool_round_trip_through_a_session_id, messages_api_tool_use_round_trip,
             v4ctl_chat_shows_the_tool_call_line]
    try:
        c = d.client()
        name = c.models.list().data[0].id
        for t in tests:
            try:
                t(d, c, name)
                print("ok   http_tools.%s" % t.__name__)
            except Exception:
                import traceback
                failed.append(t.__name__)
                print("FAIL http_tools.%s\n%s" % (t.__name__, traceback.format_exc()))
    finally:
        d.stop()
    own = [tool_result_with_the_replay_off_misses_the_reply_unit]
    for t in own:
        try:
            t()
            print("ok   http_tools.%s" % t.__name__)
        except Exception:
            import traceback
            failed.append(t.__name__)
            print("FAIL http_tools.%s\n%s" % (t.__name__, traceback.format_exc()))
    n = len(tests) + len(own)
    print("http_tools: %d of %d passed%s" % (n - len(failed), n,
                                             (": failed " + ", ".join(failed)) if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
