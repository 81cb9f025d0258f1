#!/usr/bin/env python3
"""Computes tests/data/tools/reference.json by running the reference code itself:

* ReAct: `parse_messages`, `parse_response`, `add_extra_stop_words` and
  `text_complete_last_message` are taken from Qwen's `openai_api.py` (QwenLM/Qwen) and
  `make_context` from its `examples/vllm_wrapper.py`, extracted with `ast` and executed with
  stubs for the web framework, the model and the tokenizer (only the prompt text is recorded).
* Qwen2.5: the `tokenizer.chat_template` string of a GGUF file, rendered with jinja2 in the
  environment of transformers' `apply_chat_template` (trim_blocks, lstrip_blocks, `tojson` =
  `json.dumps(x, ensure_ascii=False)`), tool call arguments parsed from JSON text first, as
  OpenAI-compatible servers do.

Usage:
  make_reference.py template MODEL.gguf > NAME.jinja     (the template stored beside this script)
  make_reference.py QWEN_REPO_DIR NAME.jinja... > reference.json
(needs only the Python standard library and jinja2).
"""
import ast
import copy
import json
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def extract(path, names):
    tree = ast.parse(open(path, encoding="utf-8").read())
    keep = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name in names:
            keep.append(node)
        elif isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id in names for t in node.targets):
            keep.append(node)
    return compile(ast.Module(body=keep, type_ignores=[]), path, "exec")


class HTTPException(Exception):
    def __init__(self, status_code, detail):
        super().__init__(detail)
        self.detail = detail


class ChatMessage:
    def __init__(self, role, content=None, function_call=None):
        self.role, self.content, self.function_call = role, content, function_call


class Choice:
    def __init__(self, index, message, finish_reason):
        self.message, self.finish_reason = message, finish_reason


class Captured(Exception):
    pass


class StubTokenizer:
    """Enough of QWenTokenizer for make_context's text and text_complete_last_message's prompt."""
    im_start_id, im_end_id = -1, -2

    def __init__(self):
        self.encoded = []

    def encode(self, text, **kw):
        self.encoded.append(text)
        return [0] * len(text)


class StubModel:
    device = None

    def generate(self, *a, **kw):
        raise Captured()


class StubTorch:
    class _T:
        def to(self, device):
            return self

    def tensor(self, x):
        return StubTorch._T()


def react_namespace(qwen_repo):
    from typing import Dict, List, Optional, Tuple
    ns = {"HTTPException": HTTPException, "PreTrainedTokenizer": object, "List": List,
          "Tuple": Tuple, "Dict": Dict, "Optional": Optional, "ChatMessage": ChatMessage,
          "ChatCompletionResponseChoice": Choice, "copy": copy, "json": json,
          "torch": StubTorch(), "model": StubModel()}
    exec(extract(os.path.join(qwen_repo, "openai_api.py"),
                 {"add_extra_stop_words", "trim_stop_words", "TOOL_DESC", "REACT_INSTRUCTION",
                  "_TEXT_COMPLETION_CMD", "parse_messages", "parse_response",
                  "text_complete_last_message"}), ns)
    exec(extract(os.path.join(qwen_repo, "examples", "vllm_wrapper.py"), {"make_context"}), ns)
    return ns


def to_legacy(messages):
    """OpenAI `tools` messages in the shape openai_api.py takes: a tool result is a function
    result, an assistant's single tool call its function_call."""
    out = []
    for m in messages:
        m = dict(m)
        if m["role"] == "tool":
            m = {"role": "function", "content": m.get("content")}
        calls = m.pop("tool_calls", None)
        if calls:
            assert len(calls) == 1
            m["function_call"] = {"name": calls[0]["function"]["name"],
                                  "arguments": calls[0]["function"]["arguments"]}
        out.append(ChatMessage(m["role"], m.get("content"), m.get("function_call")))
    return out


def react_prompt(ns, messages, functions):
    query, history, system = ns["parse_messages"](to_legacy(messages), functions)
    stop = ns["add_extra_stop_words"](None)
    if functions:
        stop = stop or []
        if "Observation:" not in stop:
            stop.append("Observation:")
    if query is ns["_TEXT_COMPLETION_CMD"]:
        tok = StubTokenizer()
        ns["tokenizer"] = tok
        try:
            ns["text_complete_last_message"](history, None, {}, system)
        except Captured:
            pass
        return {"text": tok.encoded[-1], "continuation": True, "stop": stop}
    raw_text, _ = ns["make_context"](StubTokenizer(), query, history=history, system=system)
    return {"text": raw_text, "continuation": False, "stop": stop}


def gguf_string(path, key):
    with open(path, "rb") as f:
        def r(fmt):
            return struct.unpack("<" + fmt, f.read(struct.calcsize("<" + fmt)))

        def s():
            (n,) = r("Q")
            return f.read(n).decode("utf-8")

        sizes = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q",
                 11: "q", 12: "d"}

        def skip(t):
            if t == 8:
                s()
            elif t == 9:
                (et,) = r("I")
                (n,) = r("Q")
                if et in sizes:
                    f.seek(n * struct.calcsize(sizes[et]), 1)
                else:
                    for _ in range(n):
                        skip(et)
            else:
                r(sizes[t])

        assert f.read(4) == b"GGUF"
        r("I")
        _, n_kv = r("QQ")
        for _ in range(n_kv):
            k = s()
            (t,) = r("I")
            if k == key and t == 8:
                return s()
            skip(t)
    raise KeyError(key)


def qwen25_env():
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = tojson
    return env


def qwen25_prompt(template, messages, functions):
    tools = [f if "function" in f else {"type": "function", "function": f} for f in functions]
    msgs = []
    for m in messages:
        m = copy.deepcopy(m)
        if m.get("content") is None:
            m["content"] = ""
        for c in m.get("tool_calls") or []:
            c["function"]["arguments"] = json.loads(c["function"]["arguments"])
        msgs.append(m)
    text = template.render(messages=msgs, tools=tools or None, add_generation_prompt=True)
    return {"text": text}


def load_functions(spec):
    if isinstance(spec, str):
        v = json.load(open(os.path.join(HERE, spec), encoding="utf-8"))
        return v["tools"] if isinstance(v, dict) else v
    return spec


def main():
    if sys.argv[1] == "template":
        sys.stdout.write(gguf_string(sys.argv[2], "tokenizer.chat_template"))
        return
    qwen_repo, templates = sys.argv[1], sys.argv[2:]
    ns = react_namespace(qwen_repo)
    env = qwen25_env()
    compiled = {os.path.basename(t): env.from_string(open(t, encoding="utf-8").read())
                for t in templates}
    out = {"react": {}, "qwen25": {name: {} for name in compiled}, "parse_response": {}}
    for case in json.load(open(os.path.join(HERE, "cases.json"), encoding="utf-8")):
        funcs = load_functions(case["functions"])
        if "react" in case["formats"]:
            plain = [f["function"] if "function" in f else f for f in funcs]
            out["react"][case["name"]] = react_prompt(ns, case["messages"], plain)
        if "qwen25" in case["formats"]:
            for name, template in compiled.items():
                out["qwen25"][name][case["name"]] = qwen25_prompt(
                    template, case["messages"], funcs)["text"]
    for name in sorted(os.listdir(HERE)):
        if name.startswith("react_") and name.endswith(".txt"):
            text = open(os.path.join(HERE, name), encoding="utf-8").read()
            c = ns["parse_response"](text)
            out["parse_response"][name] = {
                "content": c.message.content,
                "function_call": c.message.function_call,
                "finish_reason": c.finish_reason,
            }
    json.dump(out, sys.stdout, ensure_ascii=False, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
