//! Connection-manager contract (TensorRT-LLM's ucxCommTest scenarios) over real UCX.

mod common;
use common::*;
use kvxfer::kvx_status::*;
use std::sync::Arc;

const ID_TAG: u32 = 19;
const DATA_TAG: u32 = 0x74;

/// A connection from `m2` to `m1` and the one `m1` accepted for it, after the
/// identifying message (`id`) went through intact.
fn connected_pair(m1: &Cm, m2: &Cm, id: u64) -> (Conn, Conn) {
    let c = m2.connect(&[m1.address()]).pop().unwrap();
    ok(c.send(ID_TAG, &id.to_le_bytes()));
    let mut got = [0u8; 8];
    let p = m1.recv_connect(ID_TAG, &mut got, TIMEOUT_MS).unwrap();
    assert_eq!(u64::from_le_bytes(got), id);
    (c, p)
}

#[test]
fn basic_recv_connect_and_data_both_ways() {
    let m1 = Cm::new();
    let m2 = Cm::new();
    let (c, p) = connected_pair(&m1, &m2, 1);
    let data = pattern(1024, 5);
    ok(c.send(DATA_TAG, &data));
    let mut got = vec![0u8; 1024];
    ok(p.recv(DATA_TAG, &mut got, TIMEOUT_MS));
    assert_eq!(got, data);
    ok(p.send(DATA_TAG + 1, &data[..100]));
    let mut back = vec![0u8; 100];
    ok(c.recv(DATA_TAG + 1, &mut back, TIMEOUT_MS));
    assert_eq!(back, data[..100]);
    // A size mismatch is an error, not a silent truncation.
    ok(c.send(DATA_TAG, &data));
    let mut small = vec![0u8; 10];
    assert_ne!(p.recv(DATA_TAG, &mut small, TIMEOUT_MS), KVX_OK);
}

#[test]
fn same_tag_from_two_peers_never_crosses() {
    let m1 = Cm::new();
    let m2 = Cm::new();
    let recv = Cm::new();
    let conns = recv.connect(&[m1.address(), m2.address()]);
    for c in &conns {
        ok(c.send(ID_TAG, &7u64.to_le_bytes()));
    }
    let mut id = [0u8; 8];
    let p1 = m1.recv_connect(ID_TAG, &mut id, TIMEOUT_MS).unwrap();
    let p2 = m2.recv_connect(ID_TAG, &mut id, TIMEOUT_MS).unwrap();
    let (d1, d2) = (pattern(1024, 1), pattern(1024, 2));
    let t1 = std::thread::spawn({
        let p1 = Conn(p1.0);
        let d1 = d1.clone();
        move || ok(p1.send(DATA_TAG, &d1))
    });
    let t2 = std::thread::spawn({
        let p2 = Conn(p2.0);
        let d2 = d2.clone();
        move || ok(p2.send(DATA_TAG, &d2))
    });
    // Receive in reverse order: m2's first.
    let mut got = vec![0u8; 1024];
    ok(conns[1].recv(DATA_TAG, &mut got, TIMEOUT_MS));
    assert_eq!(got, d2);
    ok(conns[0].recv(DATA_TAG, &mut got, TIMEOUT_MS));
    assert_eq!(got, d1);
    t1.join().unwrap();
    t2.join().unwrap();
}

#[test]
fn connections_are_cached() {
    let m1 = Cm::new();
    let m2 = Cm::new();
    let a = m2.connect(&[m1.address()]).pop().unwrap();
    let b = m2.connect(&[m1.address()]).pop().unwrap();
    assert_eq!(a.0, b.0);
    let mut id = [0u8; 8];
    ok(a.send(ID_TAG, &[1; 8]));
    let p = m1.recv_connect(ID_TAG, &mut id, TIMEOUT_MS).unwrap();
    ok(a.send(ID_TAG, &[2; 8]));
    let q = m1.recv_connect(ID_TAG, &mut id, TIMEOUT_MS).unwrap();
    assert_eq!(p.0, q.0);
    assert_eq!(id, [2; 8]);
}

#[test]
fn recv_times_out_and_fan_in_of_eight() {
    let receiver = Arc::new(Cm::new());
    let mut buf = [0u8; 8];
    let (st, _) = receiver.recv_connect(ID_TAG, &mut buf, 50).err().unwrap();
    assert_eq!(st, KVX_ERR_TIMEOUT);
    let address = receiver.address();
    let senders: Vec<_> = (0..8u64)
        .map(|i| {
            let address = address.clone();
            std::thread::spawn(move || {
                let m = Cm::new();
                let c = m.connect(&[address]).pop().unwrap();
                ok(c.send(ID_TAG, &i.to_le_bytes()));
                let mut ack = [0u8; 1];
                ok(c.recv(42, &mut ack, TIMEOUT_MS));
                assert_eq!(ack[0], i as u8);
            })
        })
        .collect();
    let mut seen = Vec::new();
    for _ in 0..8 {
        let p = receiver.recv_connect(ID_TAG, &mut buf, TIMEOUT_MS).unwrap();
        let i = u64::from_le_bytes(buf);
        ok(p.send(42, &[i as u8]));
        seen.push(i);
    }
    seen.sort();
    assert_eq!(seen, (0..8).collect::<Vec<_>>());
    for s in senders {
        s.join().unwrap();
    }
}

#[test]
fn send_that_times_out_closes_the_connection() {
    if backend_under_test() == kvxfer::core::select::kvx_backend::KVX_BACKEND_NIXL {
        // NIXL copies a message when it is posted, so a send never waits for the receiver.
        report_skip("not on NIXL: sends are buffered and cannot time out waiting for a receiver");
        return;
    }
    let m1 = Cm::new();
    let m2 = Cm::new();
    let c = m2.connect(&[m1.address()]).pop().unwrap();
    // Large enough for rendezvous: it cannot complete while nobody receives.
    let big = vec![1u8; 8 << 20];
    let st = unsafe { kvxfer::ffi::conn::kvx_conn_send(c.0, DATA_TAG, big.as_ptr() as *const _, big.len(), 200) };
    assert_eq!(st, KVX_ERR_TIMEOUT, "{}", last_error());
    assert!(last_error().contains("connection closed"));
    assert_eq!(c.send(DATA_TAG, &[1]), KVX_ERR_PEER, "a timed-out connection must stay failed");
}

#[test]
fn shutdown_cancels_blocked_and_later_sends_and_receives() {
    let m1 = Cm::new();
    let m2 = Cm::new();
    let (_c, p) = connected_pair(&m1, &m2, 1);
    let mut id = [0u8; 8];
    let started = std::time::Instant::now();
    let (blocked_recv, blocked_connect) = std::thread::scope(|s| {
        let recv = s.spawn(|| p.recv(DATA_TAG, &mut [0u8; 16], 10_000));
        let connect = s.spawn(|| m1.recv_connect(ID_TAG + 1, &mut [0u8; 8], 10_000).err().map(|(st, _)| st));
        std::thread::sleep(std::time::Duration::from_millis(300));
        m1.shutdown();
        (recv.join().unwrap(), connect.join().unwrap())
    });
    assert_eq!(blocked_recv, KVX_ERR_CANCELED, "{}", last_error());
    assert_eq!(blocked_connect, Some(KVX_ERR_CANCELED));
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "cancelled at shutdown, not at the timeout");
    assert_eq!(p.send(DATA_TAG, b"late"), KVX_ERR_CANCELED, "{}", last_error());
    assert_eq!(p.recv(DATA_TAG, &mut [0u8; 4], 1_000), KVX_ERR_CANCELED, "{}", last_error());
    assert_eq!(m1.recv_connect(ID_TAG, &mut id, 1_000).err().map(|(st, _)| st), Some(KVX_ERR_CANCELED));
}

/// A size past the backend's message limit (NIXL: 256 MiB, one notification;
/// UCX: none of its own, so only past what a buffer can be) is refused by the
/// C ABI on both backends alike, naming the limit, before the 16 bytes that
/// are really there are read; the connection goes on.
#[test]
fn sizes_past_the_message_limit_are_refused_alike_before_memory_is_read() {
    let m1 = Cm::new();
    let m2 = Cm::new();
    let (c, p) = connected_pair(&m1, &m2, 7);
    let (limit, backend) = if backend_under_test() == kvxfer::core::select::kvx_backend::KVX_BACKEND_NIXL {
        (256usize << 20, "NIXL")
    } else {
        (isize::MAX as usize, "UCX")
    };
    let mut small = [0u8; 16];
    let data = small.as_mut_ptr() as *mut std::ffi::c_void;
    let st = unsafe { kvxfer::ffi::conn::kvx_conn_send(c.0, DATA_TAG, data, limit + 1, TIMEOUT_MS) };
    assert_eq!(st, KVX_ERR_INVALID_ARGUMENT, "send past the limit: {}", last_error());
    let expected = format!("exceeds the {backend} connection limit of {limit}");
    assert!(last_error().contains(&expected), "{}", last_error());
    let st = unsafe { kvxfer::ffi::conn::kvx_conn_recv(p.0, DATA_TAG, data, limit + 1, 100) };
    assert_eq!(st, KVX_ERR_INVALID_ARGUMENT, "recv past the limit: {}", last_error());
    assert!(last_error().contains(&expected), "{}", last_error());
    let data = pattern(64, 9);
    ok(c.send(DATA_TAG, &data));
    let mut got = vec![0u8; 64];
    ok(p.recv(DATA_TAG, &mut got, TIMEOUT_MS));
    assert_eq!(got, data, "the connection carries on after the refusals");
}

/// A length that runs into pages this process never mapped is refused before
/// anything reads or writes them (both backends), and the connection goes on.
#[test]
fn send_and_recv_into_unmapped_memory_are_refused_and_lose_nothing() {
    let m1 = Cm::new();
    let m2 = Cm::new();
    let (c, p) = connected_pair(&m1, &m2, 7);
    // The first pages of the address space are never mapped (mmap_min_addr).
    let hole = 4096usize as *mut std::ffi::c_void;
    let st = unsafe { kvxfer::ffi::conn::kvx_conn_send(c.0, DATA_TAG, hole, 16, TIMEOUT_MS) };
    assert_eq!(st, KVX_ERR_INVALID_ARGUMENT, "send from unmapped memory: {}", last_error());
    assert!(last_error().contains("not mapped"), "{}", last_error());
    let st = unsafe { kvxfer::ffi::conn::kvx_conn_recv(p.0, DATA_TAG, hole, 16, 100) };
    assert_eq!(st, KVX_ERR_INVALID_ARGUMENT, "recv into unmapped memory: {}", last_error());
    let data = pattern(64, 9);
    ok(c.send(DATA_TAG, &data));
    let mut got = vec![0u8; 64];
    ok(p.recv(DATA_TAG, &mut got, TIMEOUT_MS));
    assert_eq!(got, data, "the connection carries on after the refusals");
}

/// A NIXL manager's doorbell (UDP on its listener's address and port) takes
/// stray datagrams from anyone, of any size, and messages still arrive whole and
/// in order; on UCX the datagrams go nowhere. Either way nothing is lost.
#[test]
fn stray_datagrams_at_the_manager_port_deliver_forge_and_drop_nothing() {
    let m1 = Cm::new();
    let m2 = Cm::new();
    let (c, p) = connected_pair(&m1, &m2, 3);
    let target: std::net::SocketAddr = m1.address().parse().unwrap();
    let stranger = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let junk: Vec<Vec<u8>> = vec![vec![], b"KVXBELL1".to_vec(), vec![0xFF; 9], pattern(1200, 8), pattern(60_000, 9)];
    for round in 0..50u64 {
        for j in &junk {
            let _ = stranger.send_to(j, target);
        }
        let data = pattern(4096, round);
        ok(c.send(DATA_TAG, &data));
        let mut got = vec![0u8; 4096];
        ok(p.recv(DATA_TAG, &mut got, TIMEOUT_MS));
        assert_eq!(got, data, "round {round}");
    }
    // Nothing extra was queued for the receiver: the next receive times out.
    let mut none = vec![0u8; 4096];
    assert_eq!(p.recv(DATA_TAG, &mut none, 200), KVX_ERR_TIMEOUT);
}
