//! Transfer-agent contract, in one process, over real UCX.

mod common;
use common::*;
use kvxfer::dispatch::kvx_transfer_state::*;
use kvxfer::kvx_status::*;

#[test]
fn write_and_read_between_two_agents() {
    let a0 = Agent::new("agent0");
    let a1 = Agent::new("agent1");
    let src = vec![10u8; 100];
    let mut dst = vec![1u8; 100];
    let d0 = a0.register(&[&src]);
    let d1 = a1.register(&[&dst]);
    ok(a0.load_by_info("agent1", &a1.conn_info()));
    assert!(a0.check("agent1", &d1));
    let x = a0.submit(WRITE, &d0, &d1, "agent1", None).unwrap();
    x.expect_success();
    assert!(x.is_completed());
    assert_eq!(dst, src);
    // READ pulls the remote range into the local one.
    dst.iter_mut().for_each(|b| *b = 77);
    let mut local = vec![0u8; 100];
    let dl = a0.register(&[&local]);
    let x = a0.submit(READ, &dl, &d1, "agent1", None).unwrap();
    x.expect_success();
    assert!(x.release());
    local.iter_mut().for_each(|_| ());
    assert_eq!(local, vec![77u8; 100]);
    ok(a0.invalidate("agent1"));
    assert_eq!(a0.invalidate("agent1"), KVX_ERR_NOT_FOUND);
    ok(a0.deregister(&d0));
    ok(a1.deregister(&d1));
}

#[test]
fn sync_message_arrives_once_after_data_and_plain_write_notifies_nothing() {
    let a0 = Agent::new("s0");
    let a1 = Agent::new("s1");
    let src = pattern(1 << 20, 1);
    let dst = vec![0u8; 1 << 20];
    let d0 = a0.register(&[&src]);
    let d1 = a1.register(&[&dst]);
    ok(a0.load("s1", &a1.desc()));
    a0.submit(WRITE, &d0, &d1, "s1", None).unwrap().expect_success();
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert!(a1.notifications().is_empty(), "a write without a sync message must not notify");
    let msg = b"sync\0with\0nuls".to_vec();
    let x = a0.submit(WRITE, &d0, &d1, "s1", Some(&msg)).unwrap();
    let got = a1.wait_notifications(1, 10_000);
    // The message is only sent once the data is visible.
    assert_eq!(dst, src);
    assert_eq!(got, vec![("s0".to_string(), msg)]);
    x.expect_success();
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert!(a1.notifications().is_empty());
}

#[test]
fn notifications_keyed_by_sender_including_self() {
    let a0 = Agent::new("n0");
    let a1 = Agent::new("n1");
    let a2 = Agent::new("n2");
    ok(a0.load_by_info("n1", &a1.conn_info()));
    ok(a2.load_by_info("n1", &a1.conn_info()));
    ok(a0.notify("n1", b"first"));
    ok(a2.notify("n1", b"\0binary\0"));
    ok(a0.notify("n1", b"second"));
    ok(a1.notify("n1", b"to myself"));
    let got = a1.wait_notifications(4, 10_000);
    let from = |s: &str| got.iter().filter(|(n, _)| n == s).map(|(_, m)| m.clone()).collect::<Vec<_>>();
    assert_eq!(from("n0"), vec![b"first".to_vec(), b"second".to_vec()]);
    assert_eq!(from("n2"), vec![b"\0binary\0".to_vec()]);
    assert_eq!(from("n1"), vec![b"to myself".to_vec()]);
}

/// Small notifications leave inside the call where the transport has room
/// (shared memory); others become operations that finish later (TCP, large
/// messages). Interleaved, they still arrive whole and in order. Run in a
/// child process per `UCX_TLS`, which must be set before UCX starts.
#[test]
#[ignore = "run by small_and_large_notifications_keep_their_order with UCX_TLS set"]
fn notification_order_child() {
    if std::env::var_os("KVX_TEST_NOTIFY_ORDER").is_none() {
        return;
    }
    let a0 = Agent::new("o0");
    let a1 = Agent::new("o1");
    ok(a0.load_by_info("o1", &a1.conn_info()));
    let sent: Vec<Vec<u8>> = (0..120u8)
        .map(|i| if i % 10 == 3 { pattern(256 << 10, i as u64) } else { format!("m{i}").into_bytes() })
        .collect();
    for message in &sent {
        ok(a0.notify("o1", message));
    }
    let got: Vec<Vec<u8>> = a1.wait_notifications(sent.len(), 20_000).into_iter().map(|(_, m)| m).collect();
    assert_eq!(got.len(), sent.len());
    for (i, (g, s)) in got.iter().zip(&sent).enumerate() {
        assert!(g == s, "notification {i} differs ({} bytes, sent {})", g.len(), s.len());
    }
    println!("ORDER PASS");
}

#[test]
fn small_and_large_notifications_keep_their_order() {
    for tls in ["sm,self", "tcp"] {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["notification_order_child", "--exact", "--ignored", "--nocapture"])
            .env("UCX_TLS", tls)
            .env("KVX_TEST_NOTIFY_ORDER", "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        assert!(text.contains("ORDER PASS"), "UCX_TLS={tls}: {text}");
    }
}

#[test]
fn bad_requests_fail_before_posting() {
    let a0 = Agent::new("b0");
    let a1 = Agent::new("b1");
    let src = vec![1u8; 64];
    let unregistered = vec![2u8; 64];
    let dst = vec![0u8; 64];
    let d0 = a0.register(&[&src]);
    let d1 = a1.register(&[&dst]);
    ok(a0.load("b1", &a1.desc()));
    let (st, msg) = a0.submit(WRITE, &descs_of(&[&unregistered]), &d1, "b1", None).err().unwrap();
    assert_eq!(st, KVX_ERR_NOT_REGISTERED, "{msg}");
    let mut beyond = d1.clone();
    beyond[0].addr += 1;
    let (st, _) = a0.submit(WRITE, &d0, &beyond, "b1", None).err().unwrap();
    assert_eq!(st, KVX_ERR_NOT_REGISTERED);
    let (st, _) = a0.submit(WRITE, &d0, &d1, "nobody", None).err().unwrap();
    assert_eq!(st, KVX_ERR_NOT_FOUND);
    assert_eq!(a0.load("b1", &a1.desc()[..10]), KVX_ERR_MALFORMED);
    assert_eq!(a0.load("other-name", &a1.desc()), KVX_ERR_INVALID_ARGUMENT);
    assert!(!a0.check("b1", &beyond));
    assert_eq!(a0.deregister(&descs_of(&[&unregistered])), KVX_ERR_NOT_FOUND);
    assert_eq!(dst, vec![0u8; 64]);
}

#[test]
fn wait_with_zero_timeout_reports_progress_state() {
    let a0 = Agent::new("w0");
    let a1 = Agent::new("w1");
    let src = pattern(64 << 20, 3);
    let dst = vec![0u8; 64 << 20];
    let d0 = a0.register(&[&src]);
    let d1 = a1.register(&[&dst]);
    ok(a0.load("w1", &a1.desc()));
    let x = a0.submit(WRITE, &d0, &d1, "w1", None).unwrap();
    let first = x.wait(0);
    assert!(first == KVX_TRANSFER_IN_PROGRESS || first == KVX_TRANSFER_SUCCESS);
    assert!(!x.release() || first == KVX_TRANSFER_SUCCESS || x.is_completed());
    x.expect_success();
    assert!(x.release());
    assert!(dst == src);
}

#[test]
fn loopback_transfer_sees_memory_registered_after_first_use() {
    let a = Agent::new("loop");
    let src = pattern(4096, 9);
    let first = vec![0u8; 4096];
    let ls = a.register(&[&src]);
    let d1 = a.register(&[&first]);
    a.submit(WRITE, &ls, &d1, "loop", None).unwrap().expect_success();
    assert_eq!(first, src);
    // A region registered after the agent first talked to itself must be reachable too.
    let second = vec![0u8; 4096];
    let d2 = a.register(&[&second]);
    assert!(a.check("loop", &d2));
    a.submit(WRITE, &ls, &d2, "loop", Some(b"self")).unwrap().expect_success();
    assert_eq!(second, src);
    assert_eq!(a.wait_notifications(1, 10_000), vec![("loop".to_string(), b"self".to_vec())]);
    // And a deregistered one is no longer a target.
    ok(a.deregister(&d1));
    let (st, _) = a.submit(WRITE, &ls, &d1, "loop", None).err().unwrap();
    assert_eq!(st, KVX_ERR_NOT_REGISTERED);
}

/// TensorRT-LLM's cancel path: `wait(short)` finds the transfer running, then
/// `release()` must return true, the transfer must end failed, and the same
/// peer must carry a correct transfer right after, with nothing reloaded.
/// UCX only (two agents of one process still transfer asynchronously over
/// shared memory); tests/two_process.rs covers both backends across processes.
#[test]
fn release_mid_transfer_cancels_and_the_peer_stays_usable() {
    const MAX: usize = 256 << 20;
    if backend_under_test() != kvxfer::core::select::kvx_backend::KVX_BACKEND_UCX {
        // NIXL completes a transfer between two agents of one process inside the post.
        eprintln!("cancel under NIXL: see tests/two_process.rs");
        return;
    }
    let a0 = Agent::new("cancel0");
    let a1 = Agent::new("cancel1");
    let src = pattern(MAX, 21);
    let dst = vec![0u8; MAX];
    let d0 = a0.register(&[&src]);
    let d1 = a1.register(&[&dst]);
    ok(a0.load("cancel1", &a1.desc()));
    let prefix = |d: &[kvxfer::core::memory::kvx_memory_desc], len: usize| {
        let mut d = d.to_vec();
        d[0].len = len as u64;
        d
    };
    // Big enough that a 1 ms wait finds it still running; larger until one does.
    let mut caught = None;
    for len in [MAX / 4, MAX / 2, MAX] {
        let x = a0.submit(WRITE, &prefix(&d0, len), &prefix(&d1, len), "cancel1", Some(b"cancelled")).unwrap();
        if x.wait(1) != KVX_TRANSFER_IN_PROGRESS {
            x.expect_success();
            continue;
        }
        assert!(x.cancel(), "release() of a running transfer must succeed: {}", x.status_text());
        assert_eq!(x.wait(0), KVX_TRANSFER_FAILURE, "a cancelled transfer never reports success");
        assert!(!x.is_completed());
        let text = x.status_text();
        assert!(text.contains("KVX_ERR_CANCELED") && text.contains("canceled by release()"), "{text}");
        assert!(x.cancel(), "releasing again is harmless");
        caught = Some(text);
        break;
    }
    let text = caught.expect("no transfer was still running after 1 ms, even at 256 MiB");
    assert!(text.contains("peer stays usable"), "a live peer keeps its connection: {text}");
    // UCX holds the sync message until the data is flushed: a cancelled transfer never sends it.
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert!(a1.notifications().iter().all(|(_, m)| m != b"cancelled"), "{text}");
    // The same peer, its descriptor not reloaded: a fresh pattern arrives whole.
    let fresh = pattern(1 << 20, 22);
    let ds = a0.register(&[&fresh]);
    a0.submit(WRITE, &ds, &prefix(&d1, 1 << 20), "cancel1", Some(b"after")).unwrap().expect_success();
    assert!(dst[..1 << 20] == fresh[..], "the transfer after a cancel must deliver its data");
    let got = a1.wait_notifications(1, 10_000);
    assert!(got.iter().any(|(s, m)| s == "cancel0" && m == b"after"), "{got:?}");
}
