//! Load: many threads mixing transfers, notifications and connection calls
//! on shared agents and managers, with every transferred byte checked.
//!
//! CI runs 16 threads x 1,000 operations. `scripts/stress/load.sh` runs
//! 16 x 10,000 (`KVX_LOAD_OPS`) and the 10-minute soak (`KVX_LOAD_SECONDS`),
//! which prints resident memory over time and fails if it keeps growing.

mod common;
use common::*;
use kvxfer::core::memory::kvx_memory_desc;
use kvxfer::kvx_status::*;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const THREADS: usize = 16;
/// Each thread owns one slot of this size in every shared buffer.
const SLOT: usize = 64 << 10;

fn env_num(key: &str, default: u64) -> u64 {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Cheap deterministic content for (seed, length): every byte depends on both.
fn fill(buf: &mut [u8], seed: u64) {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for chunk in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
}

fn fnv(bytes: &[u8]) -> u64 {
    kvxfer::core::wire::checksum(bytes)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Sets the flag when dropped, also while unwinding.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

#[derive(Default)]
struct Counts {
    writes: AtomicU64,
    reads: AtomicU64,
    notifications: AtomicU64,
    messages: AtomicU64,
    connection_calls: AtomicU64,
    registrations: AtomicU64,
    bytes_checked: AtomicU64,
    /// Bytes a wrote to b and read back, as kvxfer's counters must report them.
    bytes_written: AtomicU64,
    bytes_read: AtomicU64,
}

/// A buffer of `THREADS` slots that peers write into behind Rust's back, so
/// its bytes live in `UnsafeCell`s: shared references to it never promise
/// that the bytes stay put.
struct Shared {
    cells: Box<[std::cell::UnsafeCell<u8>]>,
}

// SAFETY: threads touch disjoint slots (see `slot`).
unsafe impl Sync for Shared {}

impl Shared {
    fn new(len: usize) -> Shared {
        Shared { cells: (0..len).map(|_| std::cell::UnsafeCell::new(0)).collect() }
    }
    /// The whole buffer, for registering it.
    fn bytes(&self) -> &[u8] {
        // SAFETY: only its address and length are used (registration).
        unsafe { std::slice::from_raw_parts(self.cells.as_ptr() as *const u8, self.cells.len()) }
    }
    /// Slot `t`, to fill or compare.
    ///
    /// # Safety
    /// Only thread `t` uses slot `t`, and no transfer into it is in flight.
    #[allow(clippy::mut_from_ref)] // the cells are UnsafeCells: handing out &mut from &self is their purpose
    unsafe fn slot(&self, t: usize) -> &mut [u8] {
        std::slice::from_raw_parts_mut(self.cells[t * SLOT].get(), SLOT)
    }
    fn desc(&self, t: usize, off: usize, len: usize) -> [kvx_memory_desc; 1] {
        [kvx_memory_desc { addr: self.cells.as_ptr() as u64 + (t * SLOT + off) as u64, len: len as u64, device_id: 0 }]
    }
}

/// Run the mix: `ops` per thread, or until `seconds` have passed when non-zero.
fn run_load(ops: u64, seconds: u64) {
    let a = Agent::try_new_on(AUTO, "load-a", true, 0).unwrap();
    let b = Agent::try_new_on(AUTO, "load-b", true, 0).unwrap();
    let churn = Agent::try_new_on(AUTO, "load-churn", true, 0).unwrap();
    let (cm_a, cm_b) = (Cm::try_new_on(AUTO, 0).unwrap(), Cm::try_new_on(AUTO, 0).unwrap());
    let (a_src, a_back, b_dst) =
        (Shared::new(THREADS * SLOT), Shared::new(THREADS * SLOT), Shared::new(THREADS * SLOT));
    a.register(&[a_src.bytes(), a_back.bytes()]);
    b.register(&[b_dst.bytes()]);
    churn.register(&[&[0u8; 4096][..]]);
    ok(a.load_by_info("load-b", &b.conn_info()));
    let churn_info = churn.conn_info();
    let (addr_a, addr_b) = (cm_a.address(), cm_b.address());
    let counts = Counts::default();
    let stop = AtomicBool::new(false);
    let deadline = (seconds > 0).then(|| Instant::now() + Duration::from_secs(seconds));
    // Notifications that reached b, per sending thread: how many, and the last
    // sequence number (each must exceed the one before: per-sender order).
    let received: Mutex<HashMap<usize, (u64, Option<u64>)>> = Mutex::new(HashMap::new());
    let rss: Mutex<Vec<(u64, u64)>> = Mutex::new(Vec::new());
    let started = Instant::now();
    // KVX_LOAD_MIX narrows the mix to some classes (to find what a soak's growth comes from).
    let classes = std::env::var("KVX_LOAD_MIX").unwrap_or_else(|_| "transfer,notify,message,connect,register".into());
    let has = |c: &str| classes.split(',').any(|x| x.trim() == c);
    let mix = [
        has("transfer"),
        has("transfer"),
        has("transfer"),
        has("notify"),
        has("message"),
        has("connect"),
        has("connect"),
        has("register"),
    ];
    assert!(mix.iter().any(|&m| m), "KVX_LOAD_MIX={classes:?} selects nothing");
    let mix = &mix;

    std::thread::scope(|s| {
        // A failing worker must not leave the drainer and sampler running forever.
        let _stop_on_exit = StopOnDrop(&stop);
        // Drain b's notifications while the load runs, checking each message's checksum.
        s.spawn(|| loop {
            let done = stop.load(Ordering::Acquire);
            for (sender, msg) in b.notifications() {
                assert_eq!(sender, "load-a");
                let (body, sum) = msg.split_at(msg.len() - 8);
                assert_eq!(fnv(body), u64::from_le_bytes(sum.try_into().unwrap()), "notification corrupted: {body:?}");
                let mut w = body.split(|&c| c == b':').map(|f| std::str::from_utf8(f).unwrap_or(""));
                let (t, i): (usize, u64) = (w.next().unwrap().parse().unwrap(), w.next().unwrap().parse().unwrap());
                let mut r = received.lock().unwrap();
                let (count, last) = r.entry(t).or_default();
                assert!(last.map_or(true, |l| l < i), "thread {t}: notification {i} arrived after {last:?}");
                *count += 1;
                *last = Some(i);
            }
            // The churn agent is only a target: drop what it receives so it cannot pile up.
            drop(churn.notifications());
            if done {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        });
        // Resident memory over time.
        s.spawn(|| {
            let every = Duration::from_secs(if seconds > 0 { 30 } else { 2 });
            let mut next = Instant::now();
            while !stop.load(Ordering::Acquire) {
                if Instant::now() >= next {
                    let sample = (started.elapsed().as_secs(), rss_kib());
                    if seconds > 0 {
                        println!("rss t={}s {} KiB", sample.0, sample.1);
                    }
                    rss.lock().unwrap().push(sample);
                    next += every;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let (a, b, cm_a, cm_b) = (&a, &b, &cm_a, &cm_b);
                let (a_src, a_back, b_dst, counts) = (&a_src, &a_back, &b_dst, &counts);
                let (churn_info, addr_a, addr_b) = (&churn_info, &addr_a, &addr_b);
                s.spawn(move || {
                    let to_b = cm_a.connect(std::slice::from_ref(addr_b)).pop().unwrap();
                    let to_a = cm_b.connect(std::slice::from_ref(addr_a)).pop().unwrap();
                    let tag = t as u32;
                    let mut i = 0u64;
                    let mut rng = 0x1234_5678u64 ^ (t as u64) << 32;
                    loop {
                        if deadline.map_or(i >= ops, |d| Instant::now() >= d) {
                            break;
                        }
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        let seed = (t as u64) << 40 | i;
                        let class = rng % 8;
                        if !mix[class as usize] {
                            continue;
                        }
                        let len = 1 + (rng >> 8) as usize % SLOT;
                        let off = (rng >> 32) as usize % (SLOT - len + 1);
                        // SAFETY (every `slot(t)` below): this thread alone uses slot t, and
                        // each transfer into it is waited for before the slot is touched.
                        match class {
                            // WRITE a -> b, READ it back into a, compare every byte.
                            0..=2 => {
                                fill(&mut unsafe { a_src.slot(t) }[off..off + len], seed);
                                a.submit(WRITE, &a_src.desc(t, off, len), &b_dst.desc(t, off, len), "load-b", None)
                                    .unwrap()
                                    .expect_success();
                                a.submit(READ, &a_back.desc(t, off, len), &b_dst.desc(t, off, len), "load-b", None)
                                    .unwrap()
                                    .expect_success();
                                assert!(
                                    unsafe { a_back.slot(t) }[off..off + len]
                                        == unsafe { a_src.slot(t) }[off..off + len],
                                    "thread {t} op {i}: read back differs"
                                );
                                assert!(
                                    unsafe { b_dst.slot(t) }[off..off + len]
                                        == unsafe { a_src.slot(t) }[off..off + len],
                                    "thread {t} op {i}: target differs"
                                );
                                counts.writes.fetch_add(1, Ordering::Relaxed);
                                counts.reads.fetch_add(1, Ordering::Relaxed);
                                counts.bytes_checked.fetch_add(2 * len as u64, Ordering::Relaxed);
                                counts.bytes_written.fetch_add(len as u64, Ordering::Relaxed);
                                counts.bytes_read.fetch_add(len as u64, Ordering::Relaxed);
                            }
                            // A notification carrying its own checksum.
                            3 => {
                                let mut msg = format!("{t}:{i}:").into_bytes();
                                msg.extend((0..(rng >> 40) % 200).map(|k| (k as u8) ^ (i as u8)));
                                let sum = fnv(&msg);
                                msg.extend_from_slice(&sum.to_le_bytes());
                                ok(a.notify("load-b", &msg));
                                counts.notifications.fetch_add(1, Ordering::Relaxed);
                            }
                            // Tagged message a -> b over the connection managers.
                            4 => {
                                let n = 1 + len % 8192;
                                let mut data = vec![0u8; n];
                                fill(&mut data, seed);
                                let mut got = vec![0u8; n];
                                std::thread::scope(|s2| {
                                    let recv = s2.spawn(|| to_a.recv(tag, &mut got, TIMEOUT_MS));
                                    ok(to_b.send(tag, &data));
                                    ok(recv.join().unwrap());
                                });
                                assert!(got == data, "thread {t} op {i}: message corrupted");
                                counts.messages.fetch_add(1, Ordering::Relaxed);
                                counts.bytes_checked.fetch_add(n as u64, Ordering::Relaxed);
                            }
                            // Connection calls on shared handles, racing other threads.
                            5 | 6 => {
                                assert_eq!(
                                    cm_a.connect(std::slice::from_ref(addr_b)).pop().unwrap().0,
                                    to_b.0,
                                    "cached connection changed"
                                );
                                assert!(a.check("load-b", &b_dst.desc(t, off, len)));
                                ok(a.load_by_info("load-b", &b.conn_info()));
                                let st = if rng & (1 << 50) == 0 {
                                    a.load_by_info("load-churn", churn_info)
                                } else {
                                    a.invalidate("load-churn")
                                };
                                assert!(st == KVX_OK || st == KVX_ERR_NOT_FOUND, "churn: {st:?} {}", last_error());
                                let st = a.notify("load-churn", b"hi");
                                assert!(
                                    st == KVX_OK || st == KVX_ERR_NOT_FOUND || st == KVX_ERR_PEER,
                                    "notify churn: {st:?} {}",
                                    last_error()
                                );
                                let _ = a.desc();
                                counts.connection_calls.fetch_add(1, Ordering::Relaxed);
                            }
                            // Register a private buffer, transfer from it, deregister.
                            _ => {
                                let mut private = vec![0u8; len];
                                fill(&mut private, seed);
                                let d = a.register(&[&private]);
                                a.submit(WRITE, &d, &b_dst.desc(t, off, len), "load-b", None).unwrap().expect_success();
                                assert!(
                                    unsafe { b_dst.slot(t) }[off..off + len] == private[..],
                                    "thread {t} op {i}: private write differs"
                                );
                                ok(a.deregister(&d));
                                counts.registrations.fetch_add(1, Ordering::Relaxed);
                                counts.bytes_checked.fetch_add(len as u64, Ordering::Relaxed);
                                counts.bytes_written.fetch_add(len as u64, Ordering::Relaxed);
                            }
                        }
                        i += 1;
                    }
                    i
                })
            })
            .collect();
        let total: u64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
        // Let the last notifications arrive before the drainer stops.
        let expected = counts.notifications.load(Ordering::Relaxed) as usize;
        let until = Instant::now() + Duration::from_secs(20);
        while received.lock().unwrap().values().map(|r| r.0 as usize).sum::<usize>() < expected
            && Instant::now() < until
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        stop.store(true, Ordering::Release);
        println!("{total} operations by {THREADS} threads in {:.1} s", started.elapsed().as_secs_f64());
    });

    let received = received.into_inner().unwrap();
    let got: u64 = received.values().map(|r| r.0).sum();
    assert_eq!(got, counts.notifications.load(Ordering::Relaxed), "notifications lost or duplicated");
    let c = |x: &AtomicU64| x.load(Ordering::Relaxed);
    println!(
        "writes={} reads={} notifications={} messages={} connection_calls={} registrations={} bytes_checked={}",
        c(&counts.writes),
        c(&counts.reads),
        c(&counts.notifications),
        c(&counts.messages),
        c(&counts.connection_calls),
        c(&counts.registrations),
        c(&counts.bytes_checked)
    );
    // kvxfer's own counters agree with what the load did.
    let num = |v: &serde_json::Value| v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"));
    let stats = a.stats();
    // The backend the environment selects (TRTLLM_USE_NIXL_KVCACHE=1: NIXL), as the CI run on NIXL expects.
    assert_eq!(stats["backend"], backend_under_test().name(), "{stats}");
    let to_b = &stats["peers"]["load-b"];
    let transfers = c(&counts.writes) + c(&counts.reads) + c(&counts.registrations);
    assert_eq!(num(&to_b["transfers_started"]), transfers, "{to_b}");
    assert_eq!(num(&to_b["transfers_completed"]), transfers, "{to_b}");
    assert_eq!(to_b["transfers_failed"], serde_json::json!({}), "{to_b}");
    assert_eq!(num(&to_b["transfers_in_flight"]), 0);
    assert_eq!(num(&to_b["bytes_written"]), c(&counts.bytes_written));
    assert_eq!(num(&to_b["bytes_read"]), c(&counts.bytes_read));
    assert_eq!(num(&to_b["notifications_sent"]), c(&counts.notifications));
    assert_eq!(num(&b.stats()["peers"]["load-a"]["notifications_received"]), got);
    let latency: u64 = stats["latency_seconds"].as_object().unwrap().values().map(|h| num(&h["count"])).sum();
    assert_eq!(latency, num(&stats["counters"]["transfers_completed"]), "every completion is in a histogram");
    assert_eq!(num(&cm_a.stats()["peers"][&addr_b]["messages_sent"]), c(&counts.messages));
    assert_eq!(num(&cm_b.stats()["peers"][&addr_a]["messages_received"]), c(&counts.messages));
    let rss = rss.into_inner().unwrap();
    if seconds > 0 && rss.len() >= 4 {
        // Flat: the last samples may not exceed the first quarter's peak by more than 10%.
        let settled = rss[rss.len() / 4..].to_vec();
        let early = settled.iter().take(settled.len() / 2).map(|s| s.1).max().unwrap();
        let late = settled.iter().skip(settled.len() / 2).map(|s| s.1).max().unwrap();
        println!("rss early_peak={early} KiB late_peak={late} KiB");
        assert!(late <= early + early / 10, "resident memory kept growing: {early} KiB -> {late} KiB");
    }
}

#[test]
fn sixteen_threads_mixed_operations_with_checksums() {
    run_load(env_num("KVX_LOAD_OPS", 1_000), env_num("KVX_LOAD_SECONDS", 0));
}
