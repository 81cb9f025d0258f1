"""Fixtures that start the real `qwen serve` on a free loopback port and stop it afterwards.

Paths come from the environment (scripts/server-tests.sh sets them):
  QWEN_BIN        the qwen binary (default target/release/qwen)
  QWEN_TINY_GGUF  a tiny model (qwen2-tiny converted to F32)
  QWEN_REAL_GGUF  Qwen2.5-Coder-0.5B-Instruct Q4_K_M (tests that need sensible answers)
A missing real model skips its tests outside CI and fails them under CI (`CI` set).
"""

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))


def env_path(name, default):
    return Path(os.environ.get(name, default))


QWEN_BIN = env_path("QWEN_BIN", ROOT / "target/release/qwen")
TINY = env_path("QWEN_TINY_GGUF", ROOT / "target/server-models/qwen2-tiny-f32.gguf")
REAL = env_path(
    "QWEN_REAL_GGUF",
    Path.home() / ".cache/libqwen/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
)


class Server:
    """A `qwen serve` process; `url` is its base URL once it listens."""

    def __init__(self, model, *args):
        if not Path(model).exists():
            msg = f"model not found: {model}"
            if os.environ.get("CI"):
                pytest.fail(msg)
            pytest.skip(msg)
        cmd = [str(QWEN_BIN), "serve", "-m", str(model), "--host", "127.0.0.1", "--port", "0", *args]
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        self.log = []
        self.url = None
        deadline = time.time() + 60
        while self.url is None:
            line = self.proc.stderr.readline()
            if not line:
                raise RuntimeError("qwen serve exited:\n" + "".join(self.log))
            self.log.append(line)
            if line.startswith("listening on "):
                self.url = line.split()[-1].strip()
            if time.time() > deadline:
                self.stop()
                raise RuntimeError("qwen serve did not start:\n" + "".join(self.log))
        # Keep draining stderr so the server never blocks on a full pipe.
        self._drain = threading.Thread(target=self._read_log, daemon=True)
        self._drain.start()

    def _read_log(self):
        for line in self.proc.stderr:
            self.log.append(line)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# Tokens for a request that must still be generating while a test looks at it: ~3 s of the
# tiny model at 1400 tok/s (2 threads on a Sapphire Rapids core pair); tests close it early.
LONG_TOKENS = 4000


@pytest.fixture(scope="session")
def tiny():
    """The tiny model, 4 slots: fast, answers are noise but deterministic. The context and
    max_tokens are large so that a test that needs a request still running when it looks
    (`LONG_TOKENS`) gets seconds of generation even on a fast host, never a race."""
    s = Server(TINY, "--parallel", "4", "-c", "4096", "--max-tokens", "4000", "--threads", "2")
    yield s
    s.stop()


@pytest.fixture(scope="session")
def tiny_keyed():
    """The tiny model behind an API key, with one slot, a queue of one and a small body limit."""
    s = Server(
        TINY, "--parallel", "1", "--queue", "1", "-c", "4096", "--max-tokens", "4000",
        "--max-body", "4096",
        "--api-key", "sekrit", "--cors-origin", "http://example.test", "--timeout", "30",
    )
    yield s
    s.stop()


@pytest.fixture(scope="session")
def real():
    """Qwen2.5-Coder-0.5B-Instruct: for tests that need a meaningful answer (kept short)."""
    s = Server(REAL, "--parallel", "2", "-c", "2048", "--threads", "2")
    yield s
    s.stop()
