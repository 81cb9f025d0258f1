"""Function calling in both API dialects, plain and streamed, through the official client.

The API dialect follows the request (`functions` → `function_call`, `tools` → `tool_calls`);
the prompt format follows the model: Qwen2.5-Coder-0.5B's chat template (`<tool_call>`) here,
the ReAct prompt of Qwen-1 for models without that template (the tiny test model). The real
model answers the weather question with a call; the tiny one shows the ReAct prompt is used
and that results in the history are accepted.
"""

import json
from concurrent.futures import ThreadPoolExecutor

import openai

WEATHER = {
    "name": "get_current_weather",
    "description": "Get the current weather in a given city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "description": "The city name"}},
        "required": ["city"],
    },
}
TOOLS = [{"type": "function", "function": WEATHER}]
QUESTION = [{"role": "user", "content": "What is the weather like in Paris today?"}]


def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=600)


def streamed(stream):
    """(content, tool_calls {index: {id, name, arguments}}, function_call, finish_reason)."""
    content, calls, fcall, finish = "", {}, None, None
    for chunk in stream:
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        d = choice.delta
        content += d.content or ""
        for tc in d.tool_calls or []:
            c = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
            c["id"] = tc.id or c["id"]
            if tc.function:
                c["name"] += tc.function.name or ""
                c["arguments"] += tc.function.arguments or ""
        if d.function_call:
            fcall = fcall or {"name": "", "arguments": ""}
            fcall["name"] += d.function_call.name or ""
            fcall["arguments"] += d.function_call.arguments or ""
        if choice.finish_reason:
            assert finish is None
            finish = choice.finish_reason
    return content, calls, fcall, finish


def both(fn_plain, fn_stream):
    """Runs the plain and the streamed request at once (the server batches them)."""
    with ThreadPoolExecutor(2) as ex:
        a, b = ex.submit(fn_plain), ex.submit(fn_stream)
        return a.result(), b.result()


def test_tools_dialect(real):
    c = client(real)
    args = dict(model="m", messages=QUESTION, tools=TOOLS, temperature=0, max_tokens=60)
    plain, stream = both(
        lambda: c.chat.completions.create(**args),
        lambda: streamed(c.chat.completions.create(stream=True, **args)),
    )
    (choice,) = plain.choices
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_current_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert choice.message.function_call is None
    content, calls, fcall, finish = stream
    assert finish == "tool_calls" and fcall is None
    assert content == (choice.message.content or "")
    assert list(calls) == [0]
    assert calls[0]["name"] == "get_current_weather"
    assert json.loads(calls[0]["arguments"]) == {"city": "Paris"}
    assert calls[0]["id"].startswith("call_")


def test_functions_dialect(real):
    c = client(real)
    args = dict(model="m", messages=QUESTION, functions=[WEATHER], temperature=0, max_tokens=60)
    plain, stream = both(
        lambda: c.chat.completions.create(**args),
        lambda: streamed(c.chat.completions.create(stream=True, **args)),
    )
    (choice,) = plain.choices
    assert choice.finish_reason == "function_call"
    fc = choice.message.function_call
    assert fc.name == "get_current_weather"
    assert json.loads(fc.arguments) == {"city": "Paris"}
    assert choice.message.tool_calls is None
    content, calls, fcall, finish = stream
    assert finish == "function_call" and calls == {}
    assert fcall["name"] == "get_current_weather"
    assert json.loads(fcall["arguments"]) == {"city": "Paris"}
    assert content == (choice.message.content or "")


def test_plain_answer_when_no_tool_fits(real):
    """Offered tools that do not fit the question: a plain answer, streamed like one."""
    c = client(real)
    args = dict(
        model="m",
        messages=[{"role": "user", "content": "How do you say thank you in French? One word."}],
        tools=TOOLS, temperature=0, max_tokens=12,
    )
    plain, stream = both(
        lambda: c.chat.completions.create(**args),
        lambda: streamed(c.chat.completions.create(stream=True, **args)),
    )
    (choice,) = plain.choices
    assert choice.finish_reason in ("stop", "length")
    assert not choice.message.tool_calls
    assert "merci" in choice.message.content.lower(), choice.message.content
    content, calls, _, finish = stream
    assert (content, calls, finish) == (choice.message.content, {}, choice.finish_reason)


def test_react_prompt_and_results_on_a_model_without_tool_template(tiny):
    """The tiny model's file has no chat template, so the ReAct prompt is used: the function
    list becomes an instruction in the prompt. Both dialects and results in the history."""
    c = client(tiny)
    base = dict(model="m", temperature=0, max_tokens=8)
    n_plain = c.chat.completions.create(messages=QUESTION, **base).usage.prompt_tokens
    with_tools = c.chat.completions.create(messages=QUESTION, tools=TOOLS, **base)
    with_functions = c.chat.completions.create(messages=QUESTION, functions=[WEATHER], **base)
    assert with_tools.usage.prompt_tokens == with_functions.usage.prompt_tokens
    assert with_tools.usage.prompt_tokens > n_plain + 50
    # A call and its result, in both dialects, continue the conversation.
    call = {"name": "get_current_weather", "arguments": '{"city": "Paris"}'}
    history_tools = QUESTION + [
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "call_1", "type": "function", "function": call}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "21 C, sunny"},
    ]
    history_functions = QUESTION + [
        {"role": "assistant", "content": None, "function_call": call},
        {"role": "function", "name": "get_current_weather", "content": "21 C, sunny"},
    ]
    r1 = c.chat.completions.create(messages=history_tools, tools=TOOLS, **base)
    r2 = c.chat.completions.create(messages=history_functions, functions=[WEATHER], **base)
    assert r1.usage.prompt_tokens == r2.usage.prompt_tokens > with_tools.usage.prompt_tokens
    for r in (r1, r2):
        assert r.choices[0].finish_reason in ("stop", "length", "tool_calls", "function_call")
    # `tool_choice: "none"` offers nothing.
    none = c.chat.completions.create(messages=QUESTION, tools=TOOLS, tool_choice="none", **base)
    assert none.usage.prompt_tokens == n_plain
