"""tensorrt_llm_transfer_agent_binding driven the way TensorRT-LLM's Python
agent (tensorrt_llm/_torch/disaggregation/nixl/_agent_cpp.py) drives it,
between two processes, on the backend the environment selects."""

import itertools
import time

import numpy as np
import pytest

from conftest import digest, pattern
from kvxfer import tensorrt_llm_transfer_agent_binding as b

_names = itertools.count()


def make_agent(name):
    config = b.BaseAgentConfig(name=name, use_prog_thread=True, multi_thread=False, use_listen_thread=False,
                               enable_telemetry=False, backend_params={}, rank=0, world_size=1,
                               agent_buffer_size_mb=0, bounce_params={})
    return b.NixlTransferAgent(config)


def pair(peer_factory, size):
    n = next(_names)
    peer = peer_factory("binding", f"gen{n}", size)
    agent = make_agent(f"ctx{n}")
    # What travels between the processes is serialize()'s bytes.
    agent.load_remote_agent(f"gen{n}", b.AgentDesc.deserialize(bytes.fromhex(peer.hello["desc"])))
    peer.ask("load", f"ctx{n}", agent.get_local_agent_desc().serialize().hex())
    return agent, peer, f"gen{n}", f"ctx{n}"


def test_module_surface():
    assert b.NIXL_ENABLED is True and b.MOONCAKE_ENABLED is False
    assert {m.name for m in (b.MemoryType.DRAM, b.MemoryType.VRAM, b.MemoryType.BLK, b.MemoryType.OBJ,
                             b.MemoryType.FILE)} == {"DRAM", "VRAM", "BLK", "OBJ", "FILE"}
    assert int(b.TransferOp.READ) == 0 and int(b.TransferOp.WRITE) == 1
    assert [int(s) for s in (b.TransferState.IN_PROGRESS, b.TransferState.SUCCESS, b.TransferState.FAILURE)] == [0, 1, 2]
    d = b.MemoryDesc(4096, 64, 1)
    assert (d.addr, d.len, d.device_id) == (4096, 64, 1)
    with pytest.raises(AttributeError):
        d.addr = 5
    cfg = b.BaseAgentConfig("x")
    assert cfg.use_prog_thread and not cfg.multi_thread and not cfg.use_listen_thread and cfg.rank is None
    cfg.rank = 3
    cfg.backend_params = {"num_workers": "2"}
    assert cfg.rank == 3 and cfg.backend_params == {"num_workers": "2"}
    descs = b.MemoryDescs(b.MemoryType.DRAM, [b.MemoryDesc(1, 2, 0), (3, 4, 0)])
    assert descs.type == b.MemoryType.DRAM and [(x.addr, x.len) for x in descs.descs] == [(1, 2), (3, 4)]
    req = b.TransferRequest(b.TransferOp.WRITE, descs, descs, "peer", "msg")
    assert req.op == b.TransferOp.WRITE and req.remote_name == "peer" and req.sync_message == "msg"
    assert b.TransferRequest(b.TransferOp.READ, descs, descs, "peer").sync_message is None
    ad = b.AgentDesc(b"\x00abc")
    assert ad.backend_agent_desc == b"\x00abc"
    assert b.AgentDesc.deserialize(ad.serialize()).backend_agent_desc == b"\x00abc"
    with make_agent_ctx("surface") as agent:
        assert agent.bounce_enabled is False and agent.bounce_submit_count == 0
        assert isinstance(agent, b.BaseTransferAgent)
    assert isinstance(b.make_transfer_agent("nixl", b.BaseAgentConfig(name="made")), b.NixlTransferAgent)
    with pytest.raises(ValueError):
        b.make_transfer_agent("mooncake", b.BaseAgentConfig(name="m"))


class make_agent_ctx:
    def __init__(self, name):
        self.agent = make_agent(name)

    def __enter__(self):
        return self.agent

    def __exit__(self, *exc):
        self.agent.shutdown()


@pytest.mark.parametrize("size,count", [(1, 1), (1 << 20, 256), (16 << 20, 4096)])
def test_write_with_sync_message_then_read(peer_factory, size, count):
    agent, peer, remote, me = pair(peer_factory, size)
    step = size // count
    src = pattern(size, 4)
    # Local descriptors from numpy arrays, remote ones from tuples, as TensorRT-LLM builds them.
    addrs = np.arange(count, dtype=np.int64) * step + src.ctypes.data
    sizes = np.full(count, step, dtype=np.int64)
    sizes[-1] = size - step * (count - 1)
    local = b.MemoryDescs.from_arrays(b.MemoryType.DRAM, addrs, sizes, np.zeros(count, dtype=np.int32))
    agent.register_memory(b.MemoryDescs(b.MemoryType.DRAM, [(src.ctypes.data, size, 0)]))
    base = peer.hello["addr"]
    dst = b.MemoryDescs(b.MemoryType.DRAM, [(base + i * step, int(sizes[i]), 0) for i in range(count)])
    assert agent.check_remote_descs(remote, dst)

    status = agent.submit_transfer_requests(b.TransferRequest(b.TransferOp.WRITE, local, dst, remote, "kv-ready"))
    assert isinstance(status, b.NixlTransferStatus)
    assert status.wait(30000) == b.TransferState.SUCCESS
    assert status.is_completed()
    got = peer.ask("wait_sync", me, 30)
    assert got["messages"] == ["kv-ready"] and got["hash"] == digest(src)

    peer.ask("fill", 8)
    back = np.zeros(size, dtype=np.uint8)
    agent.register_memory(b.MemoryDescs(b.MemoryType.DRAM, [(back.ctypes.data, size, 0)]))
    back_descs = b.MemoryDescs.from_arrays_uniform_device(b.MemoryType.DRAM, addrs - src.ctypes.data + back.ctypes.data,
                                                          sizes, 0)
    status = agent.submit_transfer_requests(b.TransferRequest(b.TransferOp.READ, back_descs, dst, remote))
    assert status.wait(30000) == b.TransferState.SUCCESS
    assert getattr(status, "get_last_status_str")() == "success"
    assert np.array_equal(back, pattern(size, 8))
    agent.deregister_memory(b.MemoryDescs(b.MemoryType.DRAM, [(back.ctypes.data, size, 0)]))
    agent.invalidate_remote_agent(remote)
    agent.invalidate_remote_agent("never-loaded")  # a no-op, as TensorRT-LLM expects
    agent.shutdown()


def test_notifications_both_ways(peer_factory):
    agent, peer, remote, me = pair(peer_factory, 4096)
    agent.notify_sync_message(remote, "hello from ctx")
    assert peer.ask("wait_sync", me, 20)["messages"] == ["hello from ctx"]
    peer.ask("notify", me, "reply")
    deadline = time.monotonic() + 20
    got = {}
    while not got and time.monotonic() < deadline:
        got = agent.get_notified_sync_messages()
        time.sleep(0.001)
    assert got == {remote: ["reply"]}
    agent.shutdown()


def test_bad_input_raises():
    agent = make_agent("bad")
    with pytest.raises(ValueError):
        b.MemoryDesc(-1, 1, 0)
    with pytest.raises(TypeError):
        b.MemoryDesc("a", 1, 0)
    with pytest.raises(ValueError):
        b.MemoryDescs.from_arrays(b.MemoryType.DRAM, [1, 2], [1], [0, 0])
    with pytest.raises(ValueError):
        b.MemoryDescs.from_arrays(b.MemoryType.DRAM, np.array([1], dtype=np.int64), np.array([-5], dtype=np.int64),
                                  np.array([0], dtype=np.int32))
    with pytest.raises(TypeError):
        b.MemoryDescs(b.MemoryType.DRAM, [None])
    with pytest.raises(ValueError):
        b.AgentDesc.deserialize(b"garbage")
    with pytest.raises(ValueError):
        b.AgentDesc.deserialize(b"KVXA\x01" + (99).to_bytes(8, "little") + b"short")
    with pytest.raises(RuntimeError):
        agent.load_remote_agent("x", b.AgentDesc(b"\x00" * 64))
    with pytest.raises(ValueError):
        agent.register_memory(b.MemoryDescs(b.MemoryType.FILE, [(4096, 16, 0)]))
    with pytest.raises(ValueError):
        b.NixlTransferAgent(b.BaseAgentConfig(name="bad2", backend_params={"num_workers": "many"}))
    d = b.MemoryDescs(b.MemoryType.DRAM, [(4096, 16, 0)])
    with pytest.raises(RuntimeError):
        agent.submit_transfer_requests(b.TransferRequest(b.TransferOp.WRITE, d, d, "nobody"))
    with pytest.raises(TypeError):
        agent.submit_transfer_requests(None)
    agent.shutdown()
    with pytest.raises(ValueError):
        agent.get_local_agent_desc()
