//! The C ABI's argument validation, driven by a byte program against one
//! real UCX agent and connection manager: registrations, transfers,
//! notifications, descriptor loads, connection calls, NULLs, bad enums,
//! overflowing and out-of-range ranges, odd names.
//!
//! Invariants: no call crashes or panics (KVX_ERR_PANIC would be a bug), every
//! status is OK, IN_PROGRESS or a listed error, and a transfer the agent
//! accepts touches only memory registered with it (all such memory lives in
//! one arena owned by this target), and completes. Addresses handed to
//! registration are always inside the arena or refused by validation
//! (zero-length, overflowing), because registering unmapped memory is the
//! caller's undefined behaviour, not kvxfer's. Connection info is only ever
//! tried against loopback.
#![no_main]
use kvxfer::core::buffer::{kvx_bytes, kvx_notification_list};
use kvxfer::core::config::{kvx_agent_config, kvx_cm_config, kvx_transfer_request};
use kvxfer::core::error::kvx_status::{self, *};
use kvxfer::core::memory::kvx_memory_desc;
use kvxfer::dispatch::kvx_transfer_state;
use kvxfer::ffi::agent::*;
use kvxfer::ffi::conn::*;
use kvxfer::ffi::library::*;
use kvxfer::ffi::status::*;
use libfuzzer_sys::fuzz_target;
use std::ffi::{c_char, CString};
use std::sync::OnceLock;

const ARENA: usize = 1 << 20;
const NAME: &str = "fuzzed-agent";

struct State {
    agent: *mut kvx_agent,
    cm: *mut kvx_cm,
    arena: *mut u8,
}
unsafe impl Send for State {}
unsafe impl Sync for State {}

fn state() -> &'static State {
    static STATE: OnceLock<State> = OnceLock::new();
    STATE.get_or_init(|| unsafe {
        let name = CString::new(NAME).unwrap();
        let ip = CString::new("127.0.0.1").unwrap();
        let mut cfg: kvx_agent_config = std::mem::zeroed();
        assert_eq!(kvx_agent_config_init(&mut cfg), KVX_OK);
        cfg.name = name.as_ptr();
        cfg.listen_ip = ip.as_ptr();
        cfg.use_listen_thread = true;
        cfg.backend = 1;
        cfg.timeout_ms = 5_000;
        let mut agent = std::ptr::null_mut();
        assert_eq!(kvx_agent_create(&cfg, &mut agent), KVX_OK);
        let mut ccfg: kvx_cm_config = std::mem::zeroed();
        assert_eq!(kvx_cm_config_init(&mut ccfg), KVX_OK);
        ccfg.listen_ip = ip.as_ptr();
        ccfg.backend = 1;
        ccfg.timeout_ms = 1_000;
        let mut cm = std::ptr::null_mut();
        assert_eq!(kvx_cm_create(&ccfg, &mut cm), KVX_OK);
        let arena = Box::leak(vec![0u8; ARENA].into_boxed_slice()).as_mut_ptr();
        // The first half stays registered so transfers can succeed.
        let base = kvx_memory_desc { addr: arena as u64, len: (ARENA / 2) as u64, device_id: 0 };
        assert_eq!(kvx_agent_register_memory(agent, 0, &base, 1), KVX_OK);
        State { agent, cm, arena }
    })
}

/// Reads the program; past the end everything is zero.
struct Input<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Input<'a> {
    fn done(&self) -> bool {
        self.pos >= self.data.len()
    }
    fn u8(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    fn u64(&mut self) -> u64 {
        (self.u32() as u64) | (self.u32() as u64) << 32
    }
    fn bytes(&mut self, max: usize) -> &'a [u8] {
        let n = (self.u8() as usize).min(max);
        let start = self.pos.min(self.data.len());
        let end = (start + n).min(self.data.len());
        self.pos = start + n;
        &self.data[start..end]
    }
    /// A small enum value, sometimes an absurd one.
    fn enum_value(&mut self, valid: u32) -> u32 {
        match self.u8() {
            0..=229 => self.u8() as u32 % valid,
            _ => self.u32(),
        }
    }
    /// A name: ours, an unknown one, not UTF-8, or empty.
    fn name(&mut self) -> CString {
        match self.u8() % 5 {
            0 | 1 => CString::new(NAME).unwrap(),
            2 => CString::new(vec![0xffu8, 0xfe, b'x']).unwrap(),
            3 => CString::new("").unwrap(),
            _ => CString::new(self.bytes(64).iter().map(|&b| b.max(1)).collect::<Vec<_>>()).unwrap(),
        }
    }
    /// A range the agent may be asked to register: inside the arena, or one
    /// that validation must refuse (empty or overflowing).
    fn registrable(&mut self, arena: *mut u8) -> kvx_memory_desc {
        match self.u8() % 8 {
            0 => kvx_memory_desc { addr: self.u64(), len: 0, device_id: 0 },
            1 => {
                kvx_memory_desc { addr: u64::MAX - (self.u8() as u64), len: 1 + self.u64() % 4096 + 256, device_id: 0 }
            }
            _ => self.in_arena(arena),
        }
    }
    fn in_arena(&mut self, arena: *mut u8) -> kvx_memory_desc {
        let off = self.u32() as usize % ARENA;
        let len = self.u32() as usize % (ARENA - off + 1);
        kvx_memory_desc { addr: arena as u64 + off as u64, len: len as u64, device_id: self.u8() as u32 % 2 }
    }
    /// A range a transfer may name: anything at all (validation against
    /// registrations must refuse what is not registered).
    fn any_range(&mut self, arena: *mut u8) -> kvx_memory_desc {
        match self.u8() % 4 {
            0 => kvx_memory_desc { addr: self.u64(), len: self.u64() % (ARENA as u64 * 2), device_id: 0 },
            _ => self.in_arena(arena),
        }
    }
}

#[track_caller]
fn allowed(st: kvx_status) {
    assert_ne!(st, KVX_ERR_PANIC, "a panic reached the C boundary: {}", last());
    assert_ne!(st, KVX_ERR_INTERNAL, "internal error: {}", last());
}

fn last() -> String {
    unsafe { std::ffi::CStr::from_ptr(kvx_last_error()).to_string_lossy().into_owned() }
}

/// Connection info that is safe to try: loopback only, or not an address at all.
fn loopback_only(text: &[u8]) -> Option<CString> {
    let s = std::str::from_utf8(text).ok()?;
    if let Ok(addr) = s.trim().parse::<std::net::SocketAddr>() {
        if !addr.ip().is_loopback() {
            return None;
        }
    }
    CString::new(s).ok()
}

unsafe fn run(input: &mut Input) {
    let s = state();
    let mut registered: Vec<kvx_memory_desc> = Vec::new();
    let mut steps = 0;
    while !input.done() && steps < 64 {
        steps += 1;
        match input.u8() % 13 {
            0 => {
                let mem_type = input.enum_value(2);
                let n = input.u8() as usize % 4;
                let descs: Vec<_> = (0..n).map(|_| input.registrable(s.arena)).collect();
                let ptr = if input.u8() < 16 { std::ptr::null() } else { descs.as_ptr() };
                let st = kvx_agent_register_memory(s.agent, mem_type, ptr, n);
                allowed(st);
                if st == KVX_OK {
                    assert!(
                        descs.iter().all(|d| d.len > 0
                            && d.addr >= s.arena as u64
                            && d.addr + d.len <= s.arena as u64 + ARENA as u64),
                        "validation accepted a range outside the arena"
                    );
                    registered.extend(descs);
                }
            }
            1 => {
                let d = if !registered.is_empty() && input.u8() < 200 {
                    registered.swap_remove(input.u8() as usize % registered.len())
                } else {
                    input.any_range(s.arena)
                };
                allowed(kvx_agent_deregister_memory(s.agent, input.enum_value(2), &d, 1));
            }
            2 => {
                let n = input.u8() as usize % 5;
                let local: Vec<_> = (0..n).map(|_| input.any_range(s.arena)).collect();
                let remote: Vec<_> = local
                    .iter()
                    .map(|l| {
                        let mut r = input.any_range(s.arena);
                        if input.u8() < 200 {
                            r.len = l.len;
                        }
                        r
                    })
                    .collect();
                let name = input.name();
                let msg = input.bytes(255).to_vec();
                let req = kvx_transfer_request {
                    op: input.enum_value(2),
                    src_type: input.enum_value(2),
                    src_descs: if input.u8() < 8 { std::ptr::null() } else { local.as_ptr() },
                    dst_type: input.enum_value(2),
                    dst_descs: if input.u8() < 8 { std::ptr::null() } else { remote.as_ptr() },
                    count: n,
                    remote_name: if input.u8() < 8 { std::ptr::null() } else { name.as_ptr() },
                    sync_message: if input.u8() < 8 { std::ptr::null() } else { msg.as_ptr() },
                    sync_message_len: msg.len(),
                    has_sync_message: input.u8() & 1 == 1,
                };
                let mut x = std::ptr::null_mut();
                let st = kvx_agent_submit(s.agent, &req, &mut x);
                allowed(st);
                if st == KVX_OK {
                    assert!(n > 0, "accepted a request without descriptors");
                    let end = s.arena as u64 + ARENA as u64;
                    for d in local.iter().chain(&remote) {
                        assert!(
                            d.len > 0 && d.addr >= s.arena as u64 && d.addr + d.len <= end,
                            "accepted a transfer outside registered memory: {d:?}"
                        );
                    }
                    let mut state = kvx_transfer_state::KVX_TRANSFER_IN_PROGRESS;
                    allowed(kvx_xfer_wait(x, 10_000, &mut state));
                    assert_eq!(
                        state,
                        kvx_transfer_state::KVX_TRANSFER_SUCCESS,
                        "loop-back transfer within registered memory did not succeed"
                    );
                    kvx_xfer_destroy(x);
                }
            }
            3 => {
                let n = input.u8() as usize % 4;
                let descs: Vec<_> = (0..n).map(|_| input.any_range(s.arena)).collect();
                let name = input.name();
                let mut yes = false;
                allowed(kvx_agent_check_remote_descs(
                    s.agent,
                    name.as_ptr(),
                    input.enum_value(2),
                    descs.as_ptr(),
                    n,
                    &mut yes,
                ));
            }
            4 => {
                let name = input.name();
                let msg = input.bytes(255);
                let ptr = if input.u8() < 16 { std::ptr::null() } else { msg.as_ptr() };
                allowed(kvx_agent_notify(s.agent, name.as_ptr(), ptr, msg.len()));
                let mut list: *mut kvx_notification_list = std::ptr::null_mut();
                allowed(kvx_agent_get_notifications(s.agent, &mut list));
                let n = kvx_notification_list_len(list);
                let (mut sender, mut m, mut l) = (std::ptr::null(), std::ptr::null(), 0usize);
                let index = input.u8() as usize;
                let st = kvx_notification_list_get(list, index, &mut sender, &mut m, &mut l);
                assert_eq!(st == KVX_OK, index < n);
                kvx_notification_list_free(list);
            }
            5 => {
                let name = input.name();
                let desc = input.bytes(255);
                let st = kvx_agent_load_remote(s.agent, name.as_ptr(), desc.as_ptr(), desc.len());
                allowed(st);
                if st == KVX_OK {
                    kvx_agent_invalidate_remote(s.agent, name.as_ptr());
                }
            }
            6 => {
                let name = input.name();
                if let Some(info) = loopback_only(input.bytes(64)) {
                    allowed(kvx_agent_load_remote_by_connection_info(
                        s.agent,
                        name.as_ptr(),
                        info.as_ptr(),
                        input.u8() as i64 % 20,
                    ));
                }
            }
            7 => {
                let name = input.name();
                allowed(kvx_agent_invalidate_remote(
                    s.agent,
                    if input.u8() < 8 { std::ptr::null() } else { name.as_ptr() },
                ));
            }
            8 => {
                let mut b = kvx_bytes::EMPTY;
                allowed(kvx_agent_get_local_desc(s.agent, &mut b));
                kvx_bytes_free(&mut b);
                allowed(kvx_agent_get_connection_info(s.agent, &mut b));
                kvx_bytes_free(&mut b);
                allowed(kvx_agent_get_local_desc(s.agent, std::ptr::null_mut()));
            }
            9 => {
                let p = kvx_status_str(input.u32() as i32);
                assert!(!p.is_null());
                let mut backend = 0u32;
                allowed(kvx_backend_resolve(input.u32() % 4, &mut backend));
                let mut info: kvx_backend_info = std::mem::zeroed();
                info.struct_size = input.u8() as usize % (std::mem::size_of::<kvx_backend_info>() + 1);
                allowed(kvx_backend_info_get(input.u32() % 4, &mut info));
            }
            10 => {
                let mut state = kvx_transfer_state::KVX_TRANSFER_IN_PROGRESS;
                assert_eq!(kvx_xfer_wait(std::ptr::null(), input.u64() as i64, &mut state), KVX_ERR_INVALID_ARGUMENT);
                let mut done = false;
                assert_eq!(kvx_xfer_is_completed(std::ptr::null(), &mut done), KVX_ERR_INVALID_ARGUMENT);
                assert_eq!(
                    kvx_notification_list_get(
                        std::ptr::null(),
                        0,
                        std::ptr::null_mut(),
                        std::ptr::null_mut(),
                        std::ptr::null_mut()
                    ),
                    KVX_ERR_INVALID_ARGUMENT
                );
                assert_eq!(kvx_conn_send(std::ptr::null(), 0, std::ptr::null(), 1, 0), KVX_ERR_INVALID_ARGUMENT);
            }
            11 => {
                if let Some(addr) = loopback_only(input.bytes(64)) {
                    let ptrs: [*const c_char; 2] = [addr.as_ptr(), std::ptr::null()];
                    let n = 1 + input.u8() as usize % 2;
                    let mut out = [std::ptr::null(); 2];
                    allowed(kvx_cm_get_connections(s.cm, ptrs.as_ptr(), n, input.u8() as i64 % 20, out.as_mut_ptr()));
                }
                let mut buf = vec![0u8; input.u8() as usize];
                let mut conn = std::ptr::null();
                let st = kvx_cm_recv_connect(s.cm, input.u32(), buf.as_mut_ptr() as *mut _, buf.len(), 0, &mut conn);
                allowed(st);
            }
            _ => {
                let name = input.name();
                let mut cfg: kvx_agent_config = std::mem::zeroed();
                allowed(kvx_agent_config_init(&mut cfg));
                cfg.struct_size = match input.u8() % 4 {
                    0 => input.u8() as usize % std::mem::size_of::<kvx_agent_config>(),
                    _ => std::mem::size_of::<kvx_agent_config>(),
                };
                cfg.name = if input.u8() < 32 { std::ptr::null() } else { name.as_ptr() };
                cfg.backend = input.enum_value(4);
                cfg.use_listen_thread = false;
                let mut agent = std::ptr::null_mut();
                let st = kvx_agent_create(&cfg, &mut agent);
                allowed(st);
                kvx_agent_destroy(agent);
            }
        }
    }
    if !registered.is_empty() {
        kvx_agent_deregister_memory(s.agent, 0, registered.as_ptr(), registered.len());
        kvx_agent_deregister_memory(s.agent, 1, registered.as_ptr(), registered.len());
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input { data, pos: 0 };
    unsafe { run(&mut input) };
});
