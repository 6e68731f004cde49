"""Bad input to kvxfer's API: exceptions carrying the status, never a crash."""

import mmap

import numpy as np
import pytest

import kvxfer


@pytest.fixture
def agent():
    with kvxfer.Agent("bad-input") as a:
        yield a


def test_register_refuses_what_is_not_writable_memory(agent):
    for obj in ("text", None, 5, 1.5, object()):
        with pytest.raises(TypeError):
            agent.register(obj)
    with pytest.raises(kvxfer.InvalidArgumentError):
        agent.register(b"read-only bytes")
    with pytest.raises(kvxfer.InvalidArgumentError):
        agent.register(np.zeros((8, 8))[:, ::2])  # not contiguous
    with pytest.raises(kvxfer.InvalidArgumentError):
        agent.register(bytearray())  # empty


def test_register_accepts_every_kind_of_memory(agent):
    ba = bytearray(100)
    r = agent.register(ba)
    assert r.len == 100 and r.mem_type == kvxfer.MemoryType.DRAM
    with pytest.raises(BufferError):
        ba.extend(b"x")  # pinned while registered
    agent.deregister(r)
    ba.extend(b"x")

    arr = np.arange(1000, dtype=np.float32)
    r = agent.register(arr)
    assert (r.addr, r.len) == (arr.ctypes.data, 4000)
    r2 = agent.register(memoryview(bytearray(64)))
    m = mmap.mmap(-1, 4096)
    r3 = agent.register(m)
    assert r3.len == 4096

    class DlpackOnly:  # a host tensor reachable only through DLPack
        def __init__(self, a):
            self.a = a

        def __dlpack__(self, **kw):
            return self.a.__dlpack__(**kw)

        def __dlpack_device__(self):
            return self.a.__dlpack_device__()

    d = np.arange(32, dtype=np.int64)
    r4 = agent.register(DlpackOnly(d))
    assert (r4.addr, r4.len, r4.mem_type) == (d.ctypes.data, 256, kvxfer.MemoryType.DRAM)

    class FakeCuda:  # __cuda_array_interface__ is read without touching the device
        __cuda_array_interface__ = {"data": (0x7F0000000000, False), "shape": (16, 4), "typestr": "<f4",
                                    "strides": None, "version": 3}

    found = None
    try:
        found = agent.register(FakeCuda())
    except kvxfer.Error as e:  # no GPU: the C ABI refuses VRAM it cannot map
        assert e.code < 0 and e.detail
    if found is not None:
        assert (found.len, found.mem_type) == (256, kvxfer.MemoryType.VRAM)

    buf = bytearray(64)
    r5 = agent.register((id(buf), 8, 0))  # raw tuple: the caller vouches for the memory
    for region in (r, r2, r3, r4, r5):
        agent.deregister(region)
    with pytest.raises(kvxfer.Error):
        agent.deregister(r)  # already deregistered


def test_sizes_and_numbers(agent):
    for bad in [(-1, 10), (10, -1), (2 ** 64, 1), (1, 2 ** 64), (1, 1, -1), (1, 1, 2 ** 32)]:
        with pytest.raises(kvxfer.InvalidArgumentError):
            agent.register(bad)
    with pytest.raises(TypeError):
        agent.register((1,))
    with pytest.raises(TypeError):
        agent.register(("a", 1))
    with pytest.raises(kvxfer.InvalidArgumentError):
        agent.register((4096, 0, 0))  # zero length
    with pytest.raises(kvxfer.InvalidArgumentError):
        agent.register((2 ** 64 - 8, 4096, 0))  # wraps around


def test_submit_outside_registrations(agent):
    with kvxfer.Agent("bad-peer") as peer:
        target = bytearray(4096)
        rt = peer.register(target)
        agent.load_remote("bad-peer", peer.local_desc())
        buf = bytearray(4096)
        r = agent.register(buf)
        assert agent.write(r, rt, "bad-peer").wait(10000) == kvxfer.TransferState.SUCCESS
        agent.deregister(r)
        del buf  # freed: its old address is outside every registration
        with pytest.raises(kvxfer.NotRegisteredError) as e:
            agent.write(r, rt, "bad-peer")
        assert e.value.code == -9 and e.value.status == "KVX_ERR_NOT_REGISTERED" and e.value.detail
        other = bytearray(4096)
        r2 = agent.register(other)
        with pytest.raises(kvxfer.NotRegisteredError):
            agent.write(r2, kvxfer.Region(rt.addr + 1, 4096), "bad-peer")  # past the peer's region
        with pytest.raises(kvxfer.InvalidArgumentError):
            agent.write([r2, r2], [rt], "bad-peer")
        with pytest.raises(kvxfer.NotFoundError):
            agent.write(r2, rt, "unknown-peer")
        with pytest.raises(TypeError):
            agent.write(None, rt, "bad-peer")
        with pytest.raises(TypeError):
            agent.write(r2, "x", "bad-peer")
        with pytest.raises(kvxfer.InvalidArgumentError):
            agent.submit("sideways", r2, rt, "bad-peer")
        with pytest.raises(kvxfer.InvalidArgumentError):
            agent.submit("write", r2, rt, "bad-peer", local_type=7)
        with pytest.raises(kvxfer.InvalidArgumentError):
            agent.write(r2, rt, "bad\x00peer")


def test_hostile_descriptors_and_closed_handles(agent):
    for junk in (b"", b"\x00" * 10, b"\xff" * 4096, bytes(range(256)) * 3):
        with pytest.raises(kvxfer.Error) as e:
            agent.load_remote("junk", junk)
        assert e.value.code < 0
    with pytest.raises(TypeError):
        agent.load_remote("junk", None)
    with pytest.raises(kvxfer.Error):
        agent.load_remote_by_connection("nobody", "127.0.0.1:1", timeout_ms=500)
    with pytest.raises(kvxfer.InvalidArgumentError):
        agent.load_remote_by_connection("nobody", "not an address", timeout_ms=500)
    agent.close()
    assert agent.closed
    with pytest.raises(kvxfer.InvalidArgumentError):
        agent.local_desc()
    agent.close()  # twice is fine


def test_errors_carry_code_status_and_detail():
    with pytest.raises(kvxfer.InvalidArgumentError) as e:
        kvxfer.Agent("")
    assert isinstance(e.value, ValueError) and isinstance(e.value, kvxfer.Error)
    assert e.value.code == -1 and e.value.status == "KVX_ERR_INVALID_ARGUMENT" and e.value.detail
    with pytest.raises(kvxfer.InvalidArgumentError):
        kvxfer.Agent("x", backend="carrier-pigeon")
    with pytest.raises(kvxfer.InvalidArgumentError):
        kvxfer.Region(0, 1, mem_type=9)
