"""The chat page at `/` in headless Chromium (Debian's `chromium` driven by Playwright, no
browser download): type a message, watch the reply stream in, press stop; history, Markdown,
and that the page loads nothing from anywhere but the server. Screenshot: $QWEN_SCREENSHOT.
"""

import json
import os
import shutil
import time
import urllib.request

import pytest

from conftest import TINY, Server

CHROMIUM = os.environ.get("QWEN_CHROMIUM", "/usr/bin/chromium")


def wait_js(page, expr, timeout=30):
    """Polls `expr` until it is truthy. (Playwright's wait_for_function compiles its predicate
    with eval, which the page's Content-Security-Policy forbids; evaluate is allowed.)"""
    deadline = time.time() + timeout
    while not page.evaluate(expr):
        assert time.time() < deadline, f"timed out waiting for {expr}"
        time.sleep(0.02)


def health(url):
    with urllib.request.urlopen(url + "/health", timeout=10) as r:
        return json.load(r)


@pytest.fixture(scope="module")
def browser():
    if not shutil.which(CHROMIUM):
        msg = f"{CHROMIUM} not found (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def server():
    # One slot; long answers allowed, so a reply is still streaming when stop is pressed.
    s = Server(TINY, "--parallel", "1", "-c", "4096", "--max-tokens", "4000", "-q")
    yield s
    s.stop()


def test_chat_page_streams_and_stops(browser, server):
    page = browser.new_page()
    requests, errors = [], []
    page.on("request", lambda r: requests.append(r.url))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: m.type == "error" and errors.append(m.text))
    page.goto(server.url + "/")
    wait_js(page, "document.getElementById('model-name').textContent === 'qwen2-tiny-f32'")

    page.fill("#system", "You are terse.")
    page.fill("#temperature", "0")
    page.fill("#max_tokens", "4000")  # seconds of generation: still streaming when stopped
    page.fill("#input", "Tell me a very long story.")
    page.press("#input", "Enter")

    page.wait_for_selector(".msg.user")
    assert page.inner_text(".msg.user .body") == "Tell me a very long story."
    # The reply appears piece by piece while the stop button is live.
    bubble = page.locator(".msg.assistant").first
    page.wait_for_selector(".msg.assistant.streaming")
    wait_js(page, "document.querySelector('.msg.assistant.streaming')?.textContent.length > 40")
    first_len = len(bubble.inner_text())
    wait_js(page, f"document.querySelector('.msg.assistant').textContent.length > {first_len + 20}")
    assert page.is_enabled("#stop") and not page.is_enabled("#send")
    assert health(server.url)["slots_active"] == 1

    page.click("#stop")
    page.wait_for_selector(".msg.assistant:not(.streaming)")
    assert "stopped" in page.inner_text(".msg.assistant .meta")
    assert page.is_enabled("#send") and not page.is_enabled("#stop")
    # The server noticed the aborted stream and freed the slot.
    deadline = time.time() + 5
    while health(server.url)["slots_active"]:
        assert time.time() < deadline, "slot still busy after stop"
        time.sleep(0.05)
    os.makedirs(os.path.dirname(os.path.abspath(os.environ.get("QWEN_SCREENSHOT", "target/server-web.png"))), exist_ok=True)
    page.screenshot(path=os.environ.get("QWEN_SCREENSHOT", "target/server-web.png"), full_page=True)

    # A second turn goes out with the history and runs to its end.
    page.fill("#max_tokens", "6")
    page.fill("#input", "And now?")
    page.click("#send")
    wait_js(page, "document.querySelectorAll('.msg.assistant:not(.streaming) .meta').length === 2")
    assert page.locator(".msg.user").count() == 2
    assert page.inner_text(".msg.assistant >> nth=1 >> .body").strip() != ""
    meta = page.inner_text(".msg.assistant >> nth=1 >> .meta")
    assert meta.startswith("length") and "6 tokens" in meta

    # The conversation survives a reload (localStorage).
    page.reload()
    page.wait_for_selector(".msg.assistant >> nth=1")
    assert page.locator(".msg.user").count() == 2

    # Nothing was fetched from anywhere else (no CDN): the page works offline.
    assert requests and all(u.startswith(server.url) for u in requests), requests
    # No script errors and no Content-Security-Policy violations.
    assert not errors, errors
    page.close()


def test_markdown_rendering_is_safe(browser, server):
    page = browser.new_page()
    page.goto(server.url + "/")
    html = page.evaluate(
        "renderMarkdown('# Title\\n\\nSome **bold** and *it* and `x<y`.\\n\\n"
        "```python\\nif a < b:\\n    pass\\n```\\n\\n- one\\n- two\\n\\n"
        "<img src=x onerror=alert(1)> [link](https://example.org)')"
    )
    assert "<h1>Title</h1>" in html
    assert "<strong>bold</strong>" in html and "<em>it</em>" in html
    assert "<code>x&lt;y</code>" in html
    assert '<pre><code class="language-python">if a &lt; b:\n    pass</code></pre>' in html
    assert "<ul><li>one</li><li>two</li></ul>" in html
    assert "<img" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert '<a href="https://example.org" target="_blank" rel="noopener noreferrer">link</a>' in html
    page.close()
