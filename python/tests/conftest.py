"""Shared helpers: the peer process and data patterns."""

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def pattern(size, seed):
    return ((np.arange(size, dtype=np.uint32) * 31 + seed) & 0xFF).astype(np.uint8)


def digest(buf):
    return hashlib.sha256(memoryview(buf).cast("B")).hexdigest()


class Peer:
    """A peer.py process; `ask` sends one command and returns its JSON answer."""

    def __init__(self, *args):
        self.proc = subprocess.Popen([sys.executable, os.path.join(HERE, "peer.py"), *map(str, args)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.hello = self._read()

    def _read(self):
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"peer exited (rc {self.proc.wait(timeout=10)})")
        return json.loads(line)

    def ask(self, *words):
        self.proc.stdin.write(" ".join(map(str, words)) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def kill(self):
        self.proc.kill()
        self.proc.wait(timeout=10)

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("exit\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=20)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(timeout=10)


@pytest.fixture
def peer_factory():
    peers = []

    def make(*args):
        p = Peer(*args)
        peers.append(p)
        return p

    yield make
    for p in peers:
        p.close()


@pytest.fixture(scope="session")
def expected_backend():
    return "nixl" if os.environ.get("TRTLLM_USE_NIXL_KVCACHE") == "1" and \
        os.environ.get("TRTLLM_USE_UCX_KVCACHE") != "1" else "ucx"
