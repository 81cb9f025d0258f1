"""Load test for `qwen serve`: many concurrent streaming clients, every stream checked.

    python tests/server/load_test.py --url http://127.0.0.1:8000 [--clients 32] [--requests 4]

1. Each of a few distinct prompts is asked once on its own (greedy): the reference answers.
2. `--clients` clients each send `--requests` streaming requests one after another, all clients
   at once, cycling through the prompts (greedy, the same `max_tokens`).
3. Every stream must be complete and unmixed: the role chunk first, one id throughout, exactly
   one finish_reason in the last choice chunk, usage at the end, and text equal to the reference
   answer of its own prompt. Afterwards `/health` must show no active slot and an empty queue.

Bounded in time (`--deadline` seconds overall) and count; loopback only (refuses other hosts).
Exits 1 on any failure; prints throughput and latency either way.
"""

import argparse
import asyncio
import ipaddress
import json
import statistics
import sys
import time
import urllib.parse
import urllib.request

import openai

PROMPTS = [
    "Tell me a story about a lighthouse.",
    "What is the capital of France?",
    "Write a Python function that reverses a list.",
    "List three colours.",
    "Explain recursion to a child.",
    "你好，请介绍一下你自己。",
    "Summarize the plot of Hamlet in one sentence.",
    "What is 17 times 23?",
]


def health(url):
    with urllib.request.urlopen(url + "/health", timeout=10) as r:
        return json.load(r)


def check_loopback(url):
    host = urllib.parse.urlparse(url).hostname
    if host == "localhost":
        return
    if not ipaddress.ip_address(host).is_loopback:
        sys.exit(f"refusing to load-test {host}: loopback addresses only")


async def one_stream(client, model, prompt, max_tokens):
    """Streams one request and returns (text, finish_reason, completion_tokens, seconds);
    raises AssertionError on any malformed or mixed stream."""
    t0 = time.perf_counter()
    stream = await client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    ids, parts, finishes, usage = set(), [], [], None
    first = True
    async for chunk in stream:
        ids.add(chunk.id)
        if chunk.usage is not None:
            usage = chunk.usage
        if not chunk.choices:
            continue
        (choice,) = chunk.choices
        if first:
            assert choice.delta.role == "assistant", chunk
            first = False
        assert not finishes, "content after finish_reason"
        if choice.delta.content:
            parts.append(choice.delta.content)
        if choice.finish_reason is not None:
            finishes.append(choice.finish_reason)
    assert len(ids) == 1, f"several ids in one stream: {ids}"
    assert len(finishes) == 1, f"finish reasons: {finishes}"
    assert usage is not None, "no usage chunk"
    return "".join(parts), finishes[0], usage.completion_tokens, time.perf_counter() - t0


async def run(url, clients, requests, max_tokens):
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=300)
    model = health(url)["model"]

    # 1. References, one at a time.
    reference = {}
    for p in PROMPTS:
        text, finish, _, _ = await one_stream(client, model, p, max_tokens)
        reference[p] = (text, finish)

    # 2. Everyone at once.
    before = health(url)
    failures, latencies, tokens = [], [], 0

    async def user(i):
        nonlocal tokens
        for j in range(requests):
            prompt = PROMPTS[(i * requests + j) % len(PROMPTS)]
            try:
                text, finish, n, secs = await one_stream(client, model, prompt, max_tokens)
                if (text, finish) != reference[prompt]:
                    failures.append(f"client {i} request {j}: {prompt!r} answered {text!r} "
                                    f"({finish}), alone it was {reference[prompt]!r}")
                latencies.append(secs)
                tokens += n
            except Exception as e:  # noqa: BLE001 - every failure is reported
                failures.append(f"client {i} request {j}: {type(e).__name__}: {e}")

    t0 = time.perf_counter()
    await asyncio.gather(*(user(i) for i in range(clients)))
    wall = time.perf_counter() - t0
    await client.close()

    # 3. Nothing left behind.
    deadline = time.time() + 5
    after = health(url)
    while after["slots_active"] or after["queue"]:
        if time.time() > deadline:
            failures.append(f"slots or queue left busy: {after}")
            break
        await asyncio.sleep(0.05)
        after = health(url)
    if after["requests_cancelled"] != before["requests_cancelled"]:
        failures.append("requests were cancelled during the load test")

    n = clients * requests
    lat = sorted(latencies)
    report = {
        "requests": n,
        "ok": n - len([f for f in failures if "client" in f]),
        "seconds": round(wall, 2),
        "requests_per_s": round(n / wall, 2),
        "tokens_per_s": round(tokens / wall, 1),
        "latency_p50_s": round(statistics.median(lat), 2) if lat else None,
        "latency_p95_s": round(lat[int(0.95 * (len(lat) - 1))], 2) if lat else None,
        "decode_rows_per_step": round(
            (after["decode_rows"] - before["decode_rows"])
            / max(1, after["decode_steps"] - before["decode_steps"]), 2),
    }
    return failures, report


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--requests", type=int, default=4, help="per client")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--deadline", type=float, default=600, help="seconds for the whole test")
    a = ap.parse_args(argv)
    check_loopback(a.url)
    if not (1 <= a.clients <= 256 and 1 <= a.requests <= 64):
        sys.exit("--clients must be 1..256 and --requests 1..64")
    try:
        failures, report = asyncio.run(
            asyncio.wait_for(run(a.url, a.clients, a.requests, a.max_tokens), a.deadline)
        )
    except asyncio.TimeoutError:
        failures, report = [f"the load test took longer than {a.deadline} s"], {}
    print(json.dumps(report))
    for f in failures[:20]:
        print("FAIL", f, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
