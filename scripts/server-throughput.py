#!/usr/bin/env python3
"""Aggregate generation throughput of `qwen serve` with N concurrent streams versus one.

    target/server-venv/bin/python scripts/server-throughput.py -m MODEL.gguf [--streams 8]
        [--max-tokens 128] [--threads T] [--reps 2]

Starts `qwen serve --parallel N` on a free loopback port, warms it up, then alternates
  - one streaming request alone, and
  - N streaming requests at once (different prompts),
`--reps` times each, all greedy with the same `max_tokens`. Throughput is generated tokens
(from `usage`) over the wall time from sending the first request to the end of the last, so
prompt evaluation is included. Prints one JSON line with both rates and their ratio.
Needs the `openai` package (scripts/server-tests.sh installs it into target/server-venv).
"""

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import openai

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [
    "Write a long story about a robot who learns to paint.",
    "Explain in detail how a compiler turns source code into machine code.",
    "Describe the history of the bicycle, decade by decade.",
    "Write a detailed guide to growing tomatoes on a balcony.",
    "Explain how public-key cryptography works, step by step.",
    "Write a long letter from a sailor to his family.",
    "Describe a walk through a busy market in Marrakesh.",
    "Explain the rules of chess to a beginner, with examples.",
]


async def stream(client, prompt, max_tokens):
    """(completion tokens, seconds to the first content, seconds in all)."""
    t0 = time.perf_counter()
    first = None
    s = await client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": prompt}],
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    tokens = 0
    async for chunk in s:
        if chunk.choices and chunk.choices[0].delta.content and first is None:
            first = time.perf_counter() - t0
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    return tokens, first or 0.0, time.perf_counter() - t0


async def batch(client, prompts, max_tokens):
    t0 = time.perf_counter()
    results = await asyncio.gather(*(stream(client, p, max_tokens) for p in prompts))
    wall = time.perf_counter() - t0
    return sum(r[0] for r in results), wall, max(r[1] for r in results)


async def measure(url, n, max_tokens, reps):
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=3600)
    await stream(client, "Hi", 4)  # warm-up: pages the weights in
    single_tok = single_s = multi_tok = multi_s = 0.0
    ttft_single = ttft_multi = 0.0
    for r in range(reps):
        t, s, f = await batch(client, [PROMPTS[r % len(PROMPTS)]], max_tokens)
        single_tok, single_s, ttft_single = single_tok + t, single_s + s, max(ttft_single, f)
        prompts = [PROMPTS[(r + i) % len(PROMPTS)] for i in range(n)]
        t, s, f = await batch(client, prompts, max_tokens)
        multi_tok, multi_s, ttft_multi = multi_tok + t, multi_s + s, max(ttft_multi, f)
        print(f"rep {r + 1}: 1 stream {single_tok / single_s:.2f} tok/s, "
              f"{n} streams {multi_tok / multi_s:.2f} tok/s", file=sys.stderr)
    await client.close()
    single, multi = single_tok / single_s, multi_tok / multi_s
    return {
        "streams": n,
        "max_tokens": max_tokens,
        "reps": reps,
        "single_tokens_per_s": round(single, 2),
        "concurrent_tokens_per_s": round(multi, 2),
        "ratio": round(multi / single, 2),
        "single_tokens": int(single_tok),
        "concurrent_tokens": int(multi_tok),
        "worst_first_token_s_single": round(ttft_single, 2),
        "worst_first_token_s_concurrent": round(ttft_multi, 2),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--qwen", default=os.environ.get("QWEN_BIN", str(ROOT / "target/release/qwen")))
    a = ap.parse_args()
    if not 1 <= a.streams <= 64:
        sys.exit("--streams must be 1..64")
    cmd = [a.qwen, "serve", "-m", a.model, "--port", "0", "--parallel", str(a.streams),
           "-c", str(256 + a.max_tokens), "-q"]
    if a.threads:
        cmd += ["--threads", str(a.threads)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        url = None
        for line in proc.stderr:
            print(line, end="", file=sys.stderr)
            if line.startswith("listening on "):
                url = line.split()[-1]
                break
        if url is None:
            sys.exit("qwen serve did not start")
        report = asyncio.run(measure(url, a.streams, a.max_tokens, a.reps))
        with open("/proc/loadavg") as f:
            report["loadavg_after"] = f.read().split()[0]
        report["cpus"] = os.cpu_count()
        print(json.dumps(report))
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    main()
