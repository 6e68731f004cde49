"""Counters through the Python API, and ``kvxfer info --stats`` reading a
running process's metrics endpoint (KVX_METRICS_ADDR)."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np

import kvxfer
from conftest import Peer, digest, pattern


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scope(snapshot, name):
    return next(s for s in snapshot["scopes"] if s["name"] == name)


def test_agent_stats_count_what_was_moved_and_info_reads_another_process():
    size = 1 << 20
    address = f"127.0.0.1:{free_port()}"
    peer = Peer("api", "stats-target", size, env=dict(os.environ, KVX_METRICS_ADDR=address))
    try:
        with kvxfer.Agent("stats-initiator", timeout_ms=10000) as agent:
            agent.load_remote("stats-target", bytes.fromhex(peer.hello["desc"]))
            peer.ask("load", agent.name, agent.local_desc().hex())
            src = pattern(size, 9)
            local = agent.register(src)
            remote = (peer.hello["addr"], size, 0)
            for _ in range(3):
                assert agent.write(local, remote, "stats-target").wait() == kvxfer.TransferState.SUCCESS
            assert peer.ask("hash")["hash"] == digest(src)
            back = np.zeros(size, dtype=np.uint8)
            assert agent.read(agent.register(back), remote, "stats-target").wait() == kvxfer.TransferState.SUCCESS

            mine = agent.stats()
            assert mine["name"] == "stats-initiator" and mine["backend"].lower() == kvxfer.resolve_backend()
            c = mine["counters"]
            assert c["transfers_started"] == 4 and c["transfers_completed"] == 4 and c["transfers_in_flight"] == 0
            assert c["bytes_written"] == 3 * size and c["bytes_read"] == size
            assert mine["peers"]["stats-target"]["transfers_completed"] == 4
            # Every completed transfer lands in exactly one latency size class.
            assert sum(h["count"] for h in mine["latency_seconds"].values()) == 4
            assert scope(kvxfer.stats_snapshot(), "stats-initiator")["counters"] == c
            assert kvxfer.metrics_address() == ""  # this process serves nothing

        # The target process serves its counters; `kvxfer info --stats` reads them.
        deadline = time.monotonic() + 10
        while True:
            try:
                urllib.request.urlopen(f"http://{address}/stats", timeout=2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, f"nothing served at {address}"
                time.sleep(0.1)
        r = subprocess.run([sys.executable, "-m", "kvxfer", "info", "--stats", address], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        served = json.loads(r.stdout.split("\n", 1)[1])
        target = scope(served, "stats-target")
        assert target["counters"]["peers_loaded"] >= 1
    finally:
        peer.close()


def test_manager_stats_count_messages(peer_factory):
    with kvxfer.ConnectionManager() as a, kvxfer.ConnectionManager() as b:
        conn = a.get_connections([b.address])[0]
        payload = bytes(range(200))
        conn.send(7, payload)
        _, got = b.recv_connect(7, len(payload), timeout_ms=10000)
        assert got == payload
        sent, received = a.stats()["counters"], b.stats()["counters"]
        assert sent["messages_sent"] == 1 and sent["message_bytes_sent"] == len(payload)
        assert received["messages_received"] == 1 and received["message_bytes_received"] == len(payload)


def test_info_stats_without_an_endpoint_prints_this_process():
    env = {k: v for k, v in os.environ.items() if k != "KVX_METRICS_ADDR"}
    r = subprocess.run([sys.executable, "-m", "kvxfer", "info", "--stats"], capture_output=True, text=True,
                       timeout=60, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "counters of this process" in r.stdout and json.loads(r.stdout.split("\n", 1)[1])["scopes"] == []
