//! The C boundary itself: header drift, exported symbols, NULL and bad
//! input handling, backend selection, hostile descriptors, many threads.

mod common;
use common::*;
use kvxfer::core::buffer::kvx_bytes;
use kvxfer::ffi::agent::*;
use kvxfer::ffi::conn::*;
use kvxfer::ffi::library::*;
use kvxfer::ffi::status::*;
use kvxfer::kvx_status::{self, *};
use std::ffi::CStr;

#[test]
fn committed_header_matches_generated() {
    let generated = std::fs::read_to_string(concat!(env!("OUT_DIR"), "/kvxfer.h")).unwrap();
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/include/kvxfer.h")).unwrap();
    assert!(generated == committed, "include/kvxfer.h is stale: copy {}/kvxfer.h over it", env!("OUT_DIR"));
}

#[test]
fn status_names_cover_every_code() {
    for s in kvx_status::ALL {
        let name = unsafe { CStr::from_ptr(kvx_status_str(s as i32)) }.to_str().unwrap();
        assert_eq!(name, s.name());
    }
    let unknown = unsafe { CStr::from_ptr(kvx_status_str(-999)) }.to_str().unwrap();
    assert_eq!(unknown, "KVX_UNKNOWN_STATUS");
}

#[test]
fn null_arguments_are_errors_with_messages() {
    unsafe {
        assert_eq!(kvx_agent_create(std::ptr::null(), std::ptr::null_mut()), KVX_ERR_INVALID_ARGUMENT);
        assert!(last_error().contains("config is NULL"));
        assert_eq!(kvx_agent_register_memory(std::ptr::null_mut(), 0, std::ptr::null(), 0), KVX_ERR_INVALID_ARGUMENT);
        assert_eq!(
            kvx_agent_submit(std::ptr::null_mut(), std::ptr::null(), std::ptr::null_mut()),
            KVX_ERR_INVALID_ARGUMENT
        );
        assert_eq!(kvx_xfer_wait(std::ptr::null(), 0, std::ptr::null_mut()), KVX_ERR_INVALID_ARGUMENT);
        let mut released = true;
        assert_eq!(kvx_xfer_cancel(std::ptr::null_mut(), &mut released), KVX_ERR_INVALID_ARGUMENT);
        assert!(last_error().contains("xfer is NULL"));
        assert_eq!(
            kvx_cm_recv_connect(std::ptr::null_mut(), 0, std::ptr::null_mut(), 0, 0, std::ptr::null_mut()),
            KVX_ERR_INVALID_ARGUMENT
        );
        assert_eq!(kvx_conn_send(std::ptr::null(), 0, std::ptr::null(), 0, 0), KVX_ERR_INVALID_ARGUMENT);
        kvx_agent_destroy(std::ptr::null_mut());
        kvx_xfer_destroy(std::ptr::null_mut());
        kvx_cm_destroy(std::ptr::null_mut());
        kvx_bytes_free(std::ptr::null_mut());
        let mut empty = kvx_bytes::EMPTY;
        kvx_bytes_free(&mut empty);
    }
}

#[test]
fn bad_values_from_c_are_refused() {
    let agent = Agent::new("validate");
    let buf = vec![0u8; 16];
    let d = descs_of(&[&buf]);
    unsafe {
        assert_eq!(kvx_agent_register_memory(agent.raw, 7, d.as_ptr(), 1), KVX_ERR_INVALID_ARGUMENT);
        let zero = [kvxfer::core::memory::kvx_memory_desc { addr: 4096, len: 0, device_id: 0 }];
        assert_eq!(kvx_agent_register_memory(agent.raw, 0, zero.as_ptr(), 1), KVX_ERR_INVALID_ARGUMENT);
        // Memory this process cannot read: a PROT_NONE page, then memory not mapped at all.
        let page =
            libc::mmap(std::ptr::null_mut(), 4096, libc::PROT_NONE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0);
        let guard = [kvxfer::core::memory::kvx_memory_desc { addr: page as u64, len: 4096, device_id: 0 }];
        assert_eq!(kvx_agent_register_memory(agent.raw, 0, guard.as_ptr(), 1), KVX_ERR_INVALID_ARGUMENT);
        assert!(last_error().contains("not mapped readable"), "{}", last_error());
        libc::munmap(page, 4096);
        // Unmapped: the first pages of the address space, which no mapping may take
        // (a page just unmapped can be taken again at once by another thread's mmap).
        let unmapped = [kvxfer::core::memory::kvx_memory_desc { addr: 4096, len: 4096, device_id: 0 }];
        assert_eq!(kvx_agent_register_memory(agent.raw, 0, unmapped.as_ptr(), 1), KVX_ERR_INVALID_ARGUMENT);
        assert!(last_error().contains("not mapped"), "{}", last_error());
        let wrap = [kvxfer::core::memory::kvx_memory_desc { addr: u64::MAX - 2, len: 10, device_id: 0 }];
        assert_eq!(kvx_agent_register_memory(agent.raw, 0, wrap.as_ptr(), 1), KVX_ERR_INVALID_ARGUMENT);
        let mut backend = 0u32;
        assert_eq!(kvx_backend_resolve(9, &mut backend), KVX_ERR_INVALID_ARGUMENT);
    }
    // Mismatched lengths are refused before anything is posted.
    let other = vec![0u8; 8];
    ok(agent.load("validate", &agent.desc()));
    let (st, msg) = agent.submit(WRITE, &d, &descs_of(&[&other]), "validate", None).err().unwrap();
    assert_eq!(st, KVX_ERR_INVALID_ARGUMENT, "{msg}");
    // And requests without descriptors.
    let (st, msg) = agent.submit(WRITE, &[], &[], "validate", Some(b"note")).err().unwrap();
    assert_eq!(st, KVX_ERR_INVALID_ARGUMENT, "{msg}");
    // So are empty ranges, inside registered memory or not, on every backend.
    let empty = [kvxfer::core::memory::kvx_memory_desc { len: 0, ..d[0] }];
    for op in [READ, WRITE] {
        let (st, msg) = agent.submit(op, &empty, &empty, "validate", None).err().unwrap();
        assert_eq!(st, KVX_ERR_INVALID_ARGUMENT, "{msg}");
        assert!(msg.contains("length 0"), "{msg}");
    }
}

#[test]
fn one_backend_per_process_and_the_other_is_a_clear_error() {
    // Load the backend under test, then ask for the other: its UCX copy must not join ours.
    let _agent = Agent::new("owner");
    let (ours, other, our_lib) = match backend_under_test() {
        kvxfer::core::select::kvx_backend::KVX_BACKEND_NIXL => (2u32, 1u32, "libnixl_capi"),
        _ => (1, 2, "libucp"),
    };
    let mut info: kvx_backend_info = unsafe { std::mem::zeroed() };
    info.struct_size = std::mem::size_of::<kvx_backend_info>();
    unsafe { ok(kvx_backend_info_get(ours, &mut info)) };
    let path = unsafe { CStr::from_ptr(info.library_path) }.to_str().unwrap();
    assert!(path.contains(our_lib), "{path}");
    assert_eq!(unsafe { kvx_backend_info_get(other, &mut info) }, KVX_ERR_BACKEND_UNAVAILABLE);
    assert!(last_error().contains("already loaded its UCX"), "{}", last_error());
}

/// The demo's target with NIXL selected, as TensorRT-LLM selects it, and `env` set.
fn nixl_target(env: &[(&str, &str)]) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_kvxfer-demo"));
    cmd.args(["target", "--size", "4096"]).env("TRTLLM_USE_NIXL_KVCACHE", "1").env_remove("TRTLLM_USE_UCX_KVCACHE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// The NIXL target must fail cleanly, saying `expected`.
fn nixl_target_fails_with(env: &[(&str, &str)], expected: &str) {
    let out = nixl_target(env).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_ne!(out.status.code(), None, "killed by a signal (an abort?): {stderr}");
    assert!(stderr.contains(expected), "expected {expected:?} in: {stderr}");
    assert!(stderr.contains("KVX_ERR_BACKEND_UNAVAILABLE"), "{stderr}");
}

#[test]
fn missing_nixl_library_or_plugin_is_a_clean_error() {
    nixl_target_fails_with(&[("KVX_NIXL_LIB", "/nonexistent/libnixl_capi.so")], "pip install --no-deps nixl-cu12");
    let empty = std::env::temp_dir().join(format!("kvx-no-plugins-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    nixl_target_fails_with(&[("NIXL_PLUGIN_DIR", empty.to_str().unwrap())], "NIXL plugin UCX not found");
}

#[test]
fn libfabric_plugin_works_or_is_a_clean_error() {
    // The plugin ships in the wheel but needs libfabric on the host: either outcome is fine, an abort is not.
    let mut child = nixl_target(&[("TRTLLM_NIXL_KVCACHE_BACKEND", "LIBFABRIC")])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    let _ = child.stdin.take().unwrap().write_all(b"quit\n");
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_ne!(out.status.code(), None, "killed by a signal: {stderr}");
    assert!(stdout.starts_with("READY") || stderr.contains("KVX_ERR_BACKEND_UNAVAILABLE"), "{stdout}{stderr}");
}

#[test]
fn hostile_descriptors_never_crash() {
    let agent = Agent::new("fuzzed");
    let victim = Agent::new("victim");
    let buf = vec![0u8; 4096];
    victim.register(&[&buf]);
    let good = victim.desc();
    let mut rng = 0x1234_5678_9abc_def0u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for i in 0..3000 {
        let mut bytes = good.clone();
        match i % 4 {
            0 => bytes.truncate((next() as usize) % bytes.len()),
            1 => {
                for _ in 0..(1 + next() % 4) {
                    let at = (next() as usize) % bytes.len();
                    bytes[at] = next() as u8;
                }
            }
            2 => bytes.extend((0..next() % 64).map(|_| next() as u8)),
            _ => bytes = (0..next() % 256).map(|_| next() as u8).collect(),
        }
        let st = agent.load("victim", &bytes);
        assert!(st == KVX_OK || (st as i32) < 0);
    }
    ok(agent.load("victim", &good));
}

#[test]
fn exported_symbols_are_only_kvx() {
    // This test runs from <target>/<profile>/deps/, where `cargo build --lib` leaves the library one level up.
    let exe = std::env::current_exe().unwrap();
    let lib = exe.parent().and_then(|deps| deps.parent()).unwrap().join("libkvxfer.so");
    if !lib.exists() {
        report_skip(&format!("{} not built (run `cargo build --lib` first, as scripts/test.sh does)", lib.display()));
        return;
    }
    let out = std::process::Command::new("nm").args(["-D", "--defined-only"]).arg(&lib).output().expect("nm");
    let text = String::from_utf8_lossy(&out.stdout);
    let symbols: Vec<&str> = text.lines().filter_map(|l| l.split_whitespace().nth(2)).collect();
    assert!(symbols.iter().any(|s| s.starts_with("kvx_")));
    let foreign: Vec<_> = symbols.iter().filter(|s| !s.starts_with("kvx_")).collect();
    assert!(foreign.is_empty(), "non-kvx exports: {foreign:?}");
    let soname = std::process::Command::new("readelf").arg("-d").arg(&lib).output().expect("readelf");
    assert!(String::from_utf8_lossy(&soname.stdout).contains("libkvxfer.so.0"));
}

#[test]
fn many_threads_share_agents_and_managers() {
    let target = Agent::new("mt-target");
    let source = Agent::new("mt-source");
    const THREADS: usize = 8;
    const PIECE: usize = 64 << 10;
    let dst = vec![0u8; THREADS * PIECE];
    let dd = target.register(&[&dst]);
    ok(source.load_by_info("mt-target", &target.conn_info()));
    let cm_recv = Cm::new();
    let cm_send = Cm::new();
    let address = cm_recv.address();
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (source, target, dd, cm_send, cm_recv, address) = (&source, &target, &dd, &cm_send, &cm_recv, &address);
            s.spawn(move || {
                let src = pattern(PIECE, t as u64);
                let ls = source.register(&[&src]);
                for round in 0..20 {
                    let r = [kvxfer::core::memory::kvx_memory_desc {
                        addr: dd[0].addr + (t * PIECE) as u64,
                        len: PIECE as u64,
                        device_id: 0,
                    }];
                    source.submit(WRITE, &ls, &r, "mt-target", None).unwrap().expect_success();
                    ok(source.notify("mt-target", format!("{t}:{round}").as_bytes()));
                    let c = cm_send.connect(std::slice::from_ref(address)).pop().unwrap();
                    ok(c.send(1000 + t as u32, &src[..256]));
                    let p = cm_recv.connect(&[cm_send.address()]).pop().unwrap();
                    let mut got = vec![0u8; 256];
                    ok(p.recv(1000 + t as u32, &mut got, TIMEOUT_MS));
                    assert_eq!(got, src[..256]);
                    let _ = target.check("mt-source", &[]);
                }
                ok(source.deregister(&ls));
            });
        }
    });
    for t in 0..THREADS {
        assert!(dst[t * PIECE..(t + 1) * PIECE] == pattern(PIECE, t as u64)[..]);
    }
    let notes = target.wait_notifications(THREADS * 20, 10_000);
    assert_eq!(notes.len(), THREADS * 20);
    for t in 0..THREADS {
        let mine: Vec<_> =
            notes.iter().filter(|(_, m)| m.starts_with(format!("{t}:").as_bytes())).map(|(_, m)| m.clone()).collect();
        let expected: Vec<_> = (0..20).map(|r| format!("{t}:{r}").into_bytes()).collect();
        assert_eq!(mine, expected, "per-sender order for thread {t}");
    }
}
