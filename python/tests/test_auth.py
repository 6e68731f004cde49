"""A peer keyed with a deployment secret (KVX_AUTH_KEY) refuses, and is refused
by, a process without it: AuthError carrying KVX_ERR_AUTH, nothing loaded."""

import os

import pytest

import kvxfer
from conftest import Peer


def test_a_keyed_peer_and_an_unkeyed_agent_refuse_each_other():
    env = {k: v for k, v in os.environ.items() if not k.startswith("KVX_AUTH")}
    peer = Peer("api", "keyed-target", 4096, env=dict(env, KVX_AUTH_KEY="deployment secret, 32 bytes long!"))
    try:
        with kvxfer.Agent("unkeyed-initiator", timeout_ms=5000) as agent:
            with pytest.raises(kvxfer.AuthError) as by_desc:
                agent.load_remote("keyed-target", bytes.fromhex(peer.hello["desc"]))
            assert (by_desc.value.code, by_desc.value.status) == (-16, "KVX_ERR_AUTH")
            with pytest.raises(kvxfer.AuthError):
                agent.load_remote_by_connection("keyed-target", peer.hello["info"])
            # Nothing was loaded: a transfer to that name finds no peer.
            assert not agent.check_remote_descs("keyed-target", [(peer.hello["addr"], 16, 0)])
    finally:
        peer.close()
