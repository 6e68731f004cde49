"""The two-process host-memory demo: a target process registers a buffer, the
initiator WRITEs a pattern into it (the target checks it when the sync message
arrives), then READs it back and checks it; prints bandwidth per direction."""

import os
import subprocess
import sys
import time

import kvxfer


def _pattern(size, seed):
    return bytes((i * 31 + seed) & 0xFF for i in range(256)) * (size // 256) + bytes(size % 256)


def _wait_for(agent, sender, timeout_s):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for who, msg in agent.get_notifications():
            if who == sender:
                return msg
        time.sleep(0.001)
    raise kvxfer.TimeoutExpiredError(-5, "KVX_ERR_TIMEOUT", f"no message from {sender} within {timeout_s} s")


def target(size):
    with kvxfer.Agent("demo-target") as agent:
        buf = bytearray(size)
        region = agent.register(buf)
        print(f"READY {agent.connection_info()} {region.addr} {region.len}", flush=True)
        # The initiator's descriptor, so the target can answer it.
        agent.load_remote("demo-initiator", bytes.fromhex(sys.stdin.readline().strip()))
        _wait_for(agent, "demo-initiator", 60)  # sync message: the WRITE has landed
        ok = buf == _pattern(size, 7)
        agent.notify("demo-initiator", b"ok" if ok else b"bad")
        _wait_for(agent, "demo-initiator", 60)  # done
    return 0 if ok else 1


def initiator(size, iters):
    env = dict(os.environ)
    proc = subprocess.Popen([sys.executable, "-m", "kvxfer", "demo", "--role", "target", "--size", str(size)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline().split()
        if not line or line[0] != "READY":
            raise RuntimeError("the target process did not start")
        info, raddr, rlen = line[1], int(line[2]), int(line[3])
        with kvxfer.Agent("demo-initiator") as agent:
            print(f"backend: {agent.backend} ({kvxfer.backend_info()['library_path']})")
            src = bytearray(_pattern(size, 7))
            local = agent.register(src)
            agent.load_remote_by_connection("demo-target", info)
            proc.stdin.write(agent.local_desc().hex() + "\n")
            proc.stdin.flush()
            remote = (raddr, rlen, 0)
            t0 = time.perf_counter()
            for i in range(iters):
                last = i == iters - 1
                agent.write(local, remote, "demo-target", sync_message=b"written" if last else None).wait()
            write_s = time.perf_counter() - t0
            verdict = _wait_for(agent, "demo-target", 60)
            back = bytearray(size)
            back_region = agent.register(back)
            t0 = time.perf_counter()
            for _ in range(iters):
                agent.read(back_region, remote, "demo-target").wait()
            read_s = time.perf_counter() - t0
            agent.notify("demo-target", b"done")
            gb = size * iters / 1e9
            print(f"WRITE {size} B x {iters}: {gb / write_s:.2f} GB/s, target check: {verdict.decode()}")
            print(f"READ  {size} B x {iters}: {gb / read_s:.2f} GB/s, data check: {'ok' if back == src else 'bad'}")
            good = verdict == b"ok" and back == src
        return 0 if proc.wait(timeout=60) == 0 and good else 1
    finally:
        if proc.poll() is None:
            proc.kill()
