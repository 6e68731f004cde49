"""The other process of the two-process tests. Driven by line commands on
stdin, answering one JSON line per command on stdout.

    python peer.py api NAME SIZE        # kvxfer.Agent with one registered buffer of SIZE bytes
    python peer.py binding NAME SIZE    # TensorRT-LLM's binding API, as its Python agent drives it
    python peer.py cm                   # kvxfer.ConnectionManager echo peer
"""

import hashlib
import json
import sys
import time

import numpy as np


def pattern(size, seed):
    return ((np.arange(size, dtype=np.uint32) * 31 + seed) & 0xFF).astype(np.uint8)


def reply(**kw):
    sys.stdout.write(json.dumps(kw) + "\n")
    sys.stdout.flush()


def digest(buf):
    return hashlib.sha256(memoryview(buf).cast("B")).hexdigest()


def run_api(name, size):
    import kvxfer

    agent = kvxfer.Agent(name)
    buf = np.zeros(size, dtype=np.uint8)
    region = agent.register(buf)
    reply(info=agent.connection_info(), desc=agent.local_desc().hex(), addr=region.addr, len=region.len,
          backend=agent.backend)
    for line in sys.stdin:
        cmd, *args = line.split()
        if cmd == "fill":
            buf[:] = pattern(size, int(args[0]))
            reply(ok=True)
        elif cmd == "hash":
            reply(hash=digest(buf))
        elif cmd == "load":
            agent.load_remote(args[0], bytes.fromhex(args[1]))
            reply(ok=True)
        elif cmd == "wait_notif":
            deadline = time.monotonic() + float(args[1])
            got = None
            while got is None and time.monotonic() < deadline:
                for sender, msg in agent.get_notifications():
                    if sender == args[0]:
                        # The buffer as it is when the message arrives: the data must be there already.
                        got = (msg, digest(buf))
                        break
                else:
                    time.sleep(0.0005)
            reply(message=got[0].hex() if got else None, hash=got[1] if got else None)
        elif cmd == "notify":
            agent.notify(args[0], bytes.fromhex(args[1]))
            reply(ok=True)
        elif cmd == "exit":
            break
    agent.close()


def run_binding(name, size):
    from kvxfer import tensorrt_llm_transfer_agent_binding as b

    # As TensorRT-LLM's _agent_cpp.py builds it: keywords, backend_params of strings.
    config = b.BaseAgentConfig(name=name, use_prog_thread=True, multi_thread=False, use_listen_thread=False,
                               enable_telemetry=False, backend_params={}, rank=0, world_size=1,
                               agent_buffer_size_mb=0, bounce_params={})
    agent = b.NixlTransferAgent(config)
    buf = np.zeros(size, dtype=np.uint8)
    agent.register_memory(b.MemoryDescs(b.MemoryType.DRAM, [(buf.ctypes.data, size, 0)]))
    reply(desc=agent.get_local_agent_desc().serialize().hex(), addr=buf.ctypes.data, len=size)
    for line in sys.stdin:
        cmd, *args = line.split()
        if cmd == "fill":
            buf[:] = pattern(size, int(args[0]))
            reply(ok=True)
        elif cmd == "load":
            agent.load_remote_agent(args[0], b.AgentDesc.deserialize(bytes.fromhex(args[1])))
            reply(ok=True)
        elif cmd == "wait_sync":
            deadline = time.monotonic() + float(args[1])
            got = None
            while got is None and time.monotonic() < deadline:
                messages = agent.get_notified_sync_messages()
                if args[0] in messages:
                    got = (messages[args[0]], digest(buf))
                else:
                    time.sleep(0.0005)
            reply(messages=got[0] if got else None, hash=got[1] if got else None)
        elif cmd == "notify":
            agent.notify_sync_message(args[0], args[1])
            reply(ok=True)
        elif cmd == "exit":
            break
    agent.shutdown()


def run_cm():
    import kvxfer

    with kvxfer.ConnectionManager() as cm:
        reply(address=cm.address)
        for line in sys.stdin:
            if line.strip() == "echo":
                conn, data = cm.recv_connect(7, 16, timeout_ms=20000)
                conn.send(8, data[::-1])
                reply(ok=True, peer=conn.peer_address)
            else:
                break


if __name__ == "__main__":
    role = sys.argv[1]
    if role == "api":
        run_api(sys.argv[2], int(sys.argv[3]))
    elif role == "binding":
        run_binding(sys.argv[2], int(sys.argv[3]))
    elif role == "cm":
        run_cm()
