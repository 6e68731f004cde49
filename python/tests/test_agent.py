"""kvxfer.Agent between two processes: data, sync messages, notifications,
in-progress waits, a killed peer. Runs on the backend the environment selects."""

import itertools
import os
import signal
import threading
import time

import numpy as np
import pytest

import kvxfer
from conftest import digest, pattern

_names = itertools.count()


def connect(peer_factory, size):
    n = next(_names)
    peer = peer_factory("api", f"target{n}", size)
    agent = kvxfer.Agent(f"initiator{n}", timeout_ms=10000)
    agent.load_remote(f"target{n}", bytes.fromhex(peer.hello["desc"]))
    peer.ask("load", agent.name, agent.local_desc().hex())
    return agent, peer, f"target{n}"


def descs(base, size, count):
    """`count` descriptors tiling `size` bytes from `base` (the last one takes the remainder)."""
    step = size // count
    return [(base + i * step, step if i < count - 1 else size - i * step, 0) for i in range(count)]


def test_backend_is_the_one_the_environment_selects(expected_backend):
    assert kvxfer.resolve_backend() == expected_backend
    assert (kvxfer.TransferState.SUCCESS.name, kvxfer.TransferState.SUCCESS.value) == ("SUCCESS", 1)
    info = kvxfer.backend_info()
    assert info["backend"] == expected_backend
    assert os.path.exists(info["library_path"])
    venv = os.environ.get("KVX_TEST_VENV")
    if venv:
        # The venv's own libucx / nixl wheel, not the copies installed system-wide.
        assert os.path.realpath(info["library_path"]).startswith(os.path.realpath(venv)), info


@pytest.mark.parametrize("size,count", [(1, 1), (4097, 1), (1 << 20, 64), (4096 * 257, 4096), (64 << 20, 1),
                                        (64 << 20, 4096)])
def test_write_then_read_checks_data(peer_factory, size, count):
    agent, peer, name = connect(peer_factory, size)
    with agent:
        src = pattern(size, 3)
        local = agent.register(src)
        remote = descs(peer.hello["addr"], size, count)
        st = agent.write(descs(local.addr, size, count), remote, name).wait()
        assert st == kvxfer.TransferState.SUCCESS
        assert peer.ask("hash")["hash"] == digest(src)

        assert peer.ask("fill", 11)["ok"]
        back = np.zeros(size, dtype=np.uint8)
        back_region = agent.register(back)
        assert agent.read(descs(back_region.addr, size, count), remote, name).wait() == kvxfer.TransferState.SUCCESS
        assert np.array_equal(back, pattern(size, 11))
        agent.deregister(back_region)
        agent.deregister(local)


def test_sync_message_arrives_after_the_data(peer_factory):
    size = 8 << 20
    agent, peer, name = connect(peer_factory, size)
    with agent:
        src = pattern(size, 5)
        local = agent.register(src)
        msg = bytes(range(256)) + b"\x00end"
        agent.write(local, (peer.hello["addr"], size, 0), name, sync_message=msg)
        got = peer.ask("wait_notif", agent.name, 30)
        assert bytes.fromhex(got["message"]) == msg
        # The hash was taken the moment the message was seen: the data was already there.
        assert got["hash"] == digest(src)


def test_binary_notifications_both_ways(peer_factory):
    agent, peer, name = connect(peer_factory, 4096)
    with agent:
        out = b"\x00\xff\x00binary\n\x00"
        agent.notify(name, out)
        got = peer.ask("wait_notif", agent.name, 20)
        assert bytes.fromhex(got["message"]) == out
        back = bytes(range(255, -1, -1))
        peer.ask("notify", agent.name, back.hex())
        deadline = time.monotonic() + 20
        seen = []
        while not seen and time.monotonic() < deadline:
            seen = agent.get_notifications()
            time.sleep(0.001)
        assert seen == [(name, back)]
        assert agent.get_notifications() == []


def test_short_wait_returns_in_progress(peer_factory, monkeypatch):
    # Over TCP a WRITE completes only once the peer has taken the data; with the peer
    # stopped it cannot, so a short wait must come back IN_PROGRESS (shared-memory
    # transports could finish without the peer, which would make this test vacuous).
    monkeypatch.setenv("UCX_TLS", "tcp,self")
    size = 16 << 20
    agent, peer, name = connect(peer_factory, size)
    with agent:
        src = pattern(size, 9)
        local = agent.register(src)
        assert agent.write(local, (peer.hello["addr"], size, 0), name).wait() == kvxfer.TransferState.SUCCESS
        os.kill(peer.proc.pid, signal.SIGSTOP)
        try:
            x = agent.write(local, (peer.hello["addr"], size, 0), name)
            assert x.wait(0) == kvxfer.TransferState.IN_PROGRESS
            t0 = time.monotonic()
            assert x.wait(300) == kvxfer.TransferState.IN_PROGRESS
            assert 0.25 < time.monotonic() - t0 < 5
            assert not x.is_completed() and x.status == "in progress"
        finally:
            os.kill(peer.proc.pid, signal.SIGCONT)
        assert x.wait(-1) == kvxfer.TransferState.SUCCESS
        assert peer.ask("hash")["hash"] == digest(src)


def test_killed_peer_raises_peer_error_within_the_timeout(peer_factory):
    size = 1 << 20
    agent, peer, name = connect(peer_factory, size)
    with agent:
        src = pattern(size, 1)
        local = agent.register(src)
        remote = (peer.hello["addr"], size, 0)
        assert agent.write(local, remote, name).wait() == kvxfer.TransferState.SUCCESS
        peer.kill()
        start = time.monotonic()
        with pytest.raises(kvxfer.PeerError) as err:
            for _ in range(200):  # until the loss is noticed; each attempt bounded by the agent's 10 s timeout
                agent.write(local, remote, name).wait(10000)
                time.sleep(0.05)
        elapsed = time.monotonic() - start
        assert err.value.code == -6 and err.value.status == "KVX_ERR_PEER"
        assert elapsed < 15, elapsed


def test_wait_releases_the_gil(peer_factory):
    with kvxfer.ConnectionManager(timeout_ms=5000) as cm:
        ticks = []
        stop = threading.Event()

        def count():
            while not stop.is_set():
                ticks.append(1)
                time.sleep(0.001)

        t = threading.Thread(target=count)
        t.start()
        with pytest.raises(kvxfer.TimeoutExpiredError):
            cm.recv_connect(99, 8, timeout_ms=500)
        stop.set()
        t.join()
        assert len(ticks) > 50  # the counter ran while recv_connect blocked


def test_many_threads_submit_at_once(peer_factory):
    size = 1 << 20
    agent, peer, name = connect(peer_factory, size)
    with agent:
        src = pattern(size, 2)
        local = agent.register(src)
        errors = []

        def worker(i):
            try:
                part = size // 8
                for _ in range(10):
                    x = agent.write(local.slice(i * part, part), (peer.hello["addr"] + i * part, part, 0), name)
                    assert x.wait(20000) == kvxfer.TransferState.SUCCESS
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        assert peer.ask("hash")["hash"] == digest(src)


def test_connection_info_load_and_check_remote_descs(peer_factory):
    size = 65536
    n = next(_names)
    peer = peer_factory("api", f"t{n}", size)
    with kvxfer.Agent(f"i{n}") as agent:
        agent.load_remote_by_connection(f"t{n}", peer.hello["info"], timeout_ms=10000)
        base = peer.hello["addr"]
        assert agent.check_remote_descs(f"t{n}", [(base, size, 0)])
        assert not agent.check_remote_descs(f"t{n}", [(base, size + 1, 0)])
        assert not agent.check_remote_descs("nobody", [(base, 1, 0)])
        agent.invalidate_remote(f"t{n}")
        assert not agent.check_remote_descs(f"t{n}", [(base, size, 0)])
        with pytest.raises(kvxfer.NotFoundError):
            agent.invalidate_remote(f"t{n}")


def test_connection_manager_send_recv(peer_factory):
    peer = peer_factory("cm")
    with kvxfer.ConnectionManager() as cm:
        conn, = cm.get_connections([peer.hello["address"]], timeout_ms=10000)
        assert cm.get_connections([peer.hello["address"]])[0] == conn
        peer.proc.stdin.write("echo\n")
        peer.proc.stdin.flush()
        conn.send(7, b"0123456789abcdef")
        assert conn.recv(8, 16, timeout_ms=20000) == b"fedcba9876543210"
        assert peer._read()["peer"] == cm.address
        buf = bytearray(4)
        with pytest.raises(kvxfer.TimeoutExpiredError):
            conn.recv(9, buf, timeout_ms=200)
