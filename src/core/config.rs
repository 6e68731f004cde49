//! The C configuration and request structs, and their validation into the
//! Rust settings the backends receive. Validation lives here once, for
//! every backend.

use super::auth::PeerAuth;
use super::completion::deadline_from_ms;
use super::error::{kvx_status, Error, Result};
use super::memory::{kvx_file_desc, kvx_memory_desc, kvx_memory_type};
use super::request::{
    kvx_transfer_op, slice, AgentSettings, Bounds, ConnectionManagerSettings, FileCopy, TransferRequest,
};
use super::select::kvx_backend;
use std::ffi::{c_char, CStr};
use std::time::Instant;

/// Timeout used when a config leaves `timeout_ms` at 0: `KVX_TIMEOUT_MS`, else 60 s
/// (TensorRT-LLM's default `kv_transfer_timeout_ms`).
pub fn default_timeout_ms() -> u64 {
    std::env::var("KVX_TIMEOUT_MS").ok().and_then(|v| v.parse().ok()).filter(|&v| v > 0).unwrap_or(60_000)
}

/// Transfer-agent configuration (TensorRT-LLM's `BaseAgentConfig`).
/// Initialise with `kvx_agent_config_init`, then set fields; `struct_size`
/// lets later versions append fields without breaking old callers.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct kvx_agent_config {
    /// `sizeof(kvx_agent_config)` as the caller compiled it.
    pub struct_size: usize,
    /// Agent name, unique among the agents that talk to each other. Required.
    pub name: *const c_char,
    /// A `kvx_backend` value; `KVX_BACKEND_AUTO` follows `TRTLLM_USE_*_KVCACHE`.
    pub backend: u32,
    /// Start a listener so peers can load this agent by connection info.
    pub use_listen_thread: bool,
    /// IP to listen on and advertise; NULL picks one (see README).
    pub listen_ip: *const c_char,
    /// Listener port; 0 picks a free one.
    pub listen_port: u16,
    /// Bound for blocking calls and for waits without a timeout, in ms; 0 = default.
    pub timeout_ms: u64,
    /// NIXL only: 0 = automatic (NIXL's progress thread on hosts with more
    /// than 4 CPUs, else kvxfer's own backing-off poller), 1 = on, 2 = off.
    /// `KVX_NIXL_PROGRESS_THREAD=1/0` sets the automatic choice.
    pub progress_thread: u32,
    /// NIXL only: transport workers of the plugin; 0 = `TRTLLM_NIXL_NUM_WORKERS`, else 1.
    pub num_workers: u32,
    /// NIXL only: plugin parameters as `key=value;key=value` (TensorRT-LLM's
    /// `backendParams`), applied over the plugin defaults; NULL for none.
    pub backend_params: *const c_char,
    /// Deployment secret authenticating peers (`auth_key_len` bytes); NULL or
    /// length 0 = `auth_key_file`, else `KVX_AUTH_KEY`, else `KVX_AUTH_KEY_FILE`,
    /// else peers are not authenticated. At least 16 bytes. Copied at create.
    pub auth_key: *const u8,
    pub auth_key_len: usize,
    /// File holding the secret (one key per line: the first signs, all are
    /// accepted, for rotation); NULL for none. Not with `auth_key`.
    pub auth_key_file: *const c_char,
}

/// `struct_size` of the first published `kvx_agent_config` (up to `backend_params`).
pub const AGENT_CONFIG_V1_SIZE: usize = std::mem::offset_of!(kvx_agent_config, auth_key);

/// Connection-manager configuration. Initialise with `kvx_cm_config_init`.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct kvx_cm_config {
    pub struct_size: usize,
    /// A `kvx_backend` value; `KVX_BACKEND_AUTO` follows `TRTLLM_USE_*_KVCACHE`.
    pub backend: u32,
    /// IP to listen on and advertise; NULL picks one (see README).
    pub listen_ip: *const c_char,
    /// Listener port; 0 picks a free one.
    pub listen_port: u16,
    /// Bound for blocking calls given a negative timeout, in ms; 0 = default.
    pub timeout_ms: u64,
    /// Deployment secret, as in `kvx_agent_config`.
    pub auth_key: *const u8,
    pub auth_key_len: usize,
    /// Key file, as in `kvx_agent_config`.
    pub auth_key_file: *const c_char,
}

/// `struct_size` of the first published `kvx_cm_config` (up to `timeout_ms`).
pub const CM_CONFIG_V1_SIZE: usize = std::mem::offset_of!(kvx_cm_config, auth_key);

/// One READ or WRITE (TensorRT-LLM's `TransferRequest`). `src_descs` are
/// always local memory and `dst_descs` remote memory in agent `remote_name`;
/// both lists have `count` entries with pairwise equal lengths.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct kvx_transfer_request {
    /// A `kvx_transfer_op` value.
    pub op: u32,
    /// A `kvx_memory_type` value.
    pub src_type: u32,
    pub src_descs: *const kvx_memory_desc,
    /// A `kvx_memory_type` value.
    pub dst_type: u32,
    pub dst_descs: *const kvx_memory_desc,
    pub count: usize,
    pub remote_name: *const c_char,
    /// Optional message delivered to the remote agent after the data has
    /// landed; used only when `has_sync_message` is true (may be empty).
    pub sync_message: *const u8,
    pub sync_message_len: usize,
    pub has_sync_message: bool,
}

impl kvx_transfer_request {
    /// A request of `op` from `local` (of memory type `local_type`) to
    /// `remote` in agent `remote_name`, with an optional sync message. The
    /// request holds raw pointers: the lists, the name and the message must
    /// outlive every use of it.
    pub fn new(
        op: u32,
        (local_type, local): (u32, &[kvx_memory_desc]),
        (remote_type, remote): (u32, &[kvx_memory_desc]),
        remote_name: &std::ffi::CStr,
        sync: Option<&[u8]>,
    ) -> kvx_transfer_request {
        kvx_transfer_request {
            op,
            src_type: local_type,
            src_descs: local.as_ptr(),
            dst_type: remote_type,
            dst_descs: remote.as_ptr(),
            count: local.len(),
            remote_name: remote_name.as_ptr(),
            sync_message: sync.map_or(std::ptr::null(), |s| s.as_ptr()),
            sync_message_len: sync.map_or(0, |s| s.len()),
            has_sync_message: sync.is_some(),
        }
    }
}

/// Copies between memory and files (TensorRT-LLM's loopback request): pair
/// `i` is `memory[i]` and `files[i]`, of equal length; `count` pairs.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct kvx_file_copy_request {
    /// A `kvx_memory_type` value.
    pub mem_type: u32,
    pub memory: *const kvx_memory_desc,
    pub files: *const kvx_file_desc,
    pub count: usize,
    /// True: memory to files (offload); false: files to memory.
    pub to_file: bool,
    /// TensorRT-LLM's `multiThread`: the storage path may use several threads.
    pub multi_thread: bool,
    /// Negative: `KVX_TIMEOUT_MS`, else 60 s.
    pub timeout_ms: i64,
}

/// `key=value;key=value` (values may contain commas, as `UCX_TLS` lists do).
pub fn parse_params(text: &str) -> Vec<(String, String)> {
    text.split(';')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .collect()
}

/// Read a required C string argument as UTF-8.
///
/// # Safety
/// `ptr` must be NULL or a NUL-terminated string.
pub unsafe fn text<'a>(ptr: *const c_char, what: &str) -> Result<&'a str> {
    if ptr.is_null() {
        return Err(Error::invalid(format!("{what} is NULL")));
    }
    CStr::from_ptr(ptr).to_str().map_err(|_| Error::invalid(format!("{what} is not UTF-8")))
}

/// Read an optional C string (NULL or empty = None).
///
/// # Safety
/// `ptr` must be NULL or a NUL-terminated string.
pub unsafe fn optional_text(ptr: *const c_char, what: &str) -> Result<Option<String>> {
    if ptr.is_null() {
        return Ok(None);
    }
    let s = text(ptr, what)?;
    Ok(if s.is_empty() { None } else { Some(s.to_owned()) })
}

/// Read a caller's config struct, tolerating older (shorter) layouts:
/// `published` lists the sizes of earlier versions; fields past the caller's
/// size keep their defaults.
///
/// # Safety
/// `ptr` must point to at least `struct_size` readable bytes.
pub unsafe fn read_versioned<T: Copy>(ptr: *const T, defaults: T, published: &[usize]) -> Result<T> {
    let size = *(ptr as *const usize);
    // Only sizes of published layouts (or larger, from newer callers) are valid:
    // copying a prefix that ends inside a field would tear a pointer in two.
    if size < std::mem::size_of::<T>() && !published.contains(&size) {
        return Err(Error::invalid(format!(
            "struct_size {size} is not a published size of this struct: call the _init function first"
        )));
    }
    let mut out = defaults;
    let n = size.min(std::mem::size_of::<T>());
    std::ptr::copy_nonoverlapping(ptr as *const u8, &mut out as *mut T as *mut u8, n);
    Ok(out)
}

pub fn agent_config_defaults() -> kvx_agent_config {
    kvx_agent_config {
        struct_size: std::mem::size_of::<kvx_agent_config>(),
        name: std::ptr::null(),
        backend: kvx_backend::KVX_BACKEND_AUTO as u32,
        use_listen_thread: true,
        listen_ip: std::ptr::null(),
        listen_port: 0,
        timeout_ms: 0,
        progress_thread: 0,
        num_workers: 0,
        backend_params: std::ptr::null(),
        auth_key: std::ptr::null(),
        auth_key_len: 0,
        auth_key_file: std::ptr::null(),
    }
}

pub fn cm_config_defaults() -> kvx_cm_config {
    kvx_cm_config {
        struct_size: std::mem::size_of::<kvx_cm_config>(),
        backend: kvx_backend::KVX_BACKEND_AUTO as u32,
        listen_ip: std::ptr::null(),
        listen_port: 0,
        timeout_ms: 0,
        auth_key: std::ptr::null(),
        auth_key_len: 0,
        auth_key_file: std::ptr::null(),
    }
}

/// # Safety
/// Pointers inside `cfg` must be NULL or valid C strings.
pub unsafe fn agent_settings(cfg: &kvx_agent_config) -> Result<AgentSettings> {
    let name = text(cfg.name, "agent name")?;
    if name.is_empty() || name.len() > super::wire::MAX_NAME_LEN {
        return Err(Error::invalid(format!("agent name must be 1..={} bytes", super::wire::MAX_NAME_LEN)));
    }
    Ok(AgentSettings {
        name: name.to_owned(),
        use_listener: cfg.use_listen_thread,
        listen_ip: optional_text(cfg.listen_ip, "listen_ip")?,
        listen_port: cfg.listen_port,
        timeout_ms: if cfg.timeout_ms == 0 { default_timeout_ms() } else { cfg.timeout_ms },
        progress_thread: match cfg.progress_thread {
            0 => None,
            1 => Some(true),
            2 => Some(false),
            other => {
                return Err(Error::invalid(format!("progress_thread {other} is unknown (0 = auto, 1 = on, 2 = off)")))
            }
        },
        num_workers: cfg.num_workers,
        backend_params: optional_text(cfg.backend_params, "backend_params")?
            .map(|t| parse_params(&t))
            .unwrap_or_default(),
        auth: peer_auth(cfg.auth_key, cfg.auth_key_len, cfg.auth_key_file)?,
    })
}

/// # Safety
/// `key` must be NULL or point to `key_len` bytes; `file` NULL or a C string.
unsafe fn peer_auth(key: *const u8, key_len: usize, file: *const c_char) -> Result<PeerAuth> {
    if key.is_null() && key_len > 0 {
        return Err(Error::invalid("auth_key is NULL but auth_key_len > 0"));
    }
    let key = slice(key, key_len);
    PeerAuth::resolve(Some(key), optional_text(file, "auth_key_file")?.as_deref())
}

/// # Safety
/// Pointers inside `cfg` must be NULL or valid C strings.
pub unsafe fn cm_settings(cfg: &kvx_cm_config) -> Result<ConnectionManagerSettings> {
    Ok(ConnectionManagerSettings {
        listen_ip: optional_text(cfg.listen_ip, "listen_ip")?,
        listen_port: cfg.listen_port,
        timeout_ms: if cfg.timeout_ms == 0 { default_timeout_ms() } else { cfg.timeout_ms },
        auth: peer_auth(cfg.auth_key, cfg.auth_key_len, cfg.auth_key_file)?,
    })
}

/// Check a request's shape before anything is posted.
///
/// # Safety
/// The pointers in `req` must be valid for `count` descriptors and the message length.
pub unsafe fn transfer_request<'a>(req: &'a kvx_transfer_request) -> Result<TransferRequest<'a>> {
    let remote_name = text(req.remote_name, "remote_name")?;
    // NIXL cannot post a request without descriptors; refuse it the same way on every backend.
    if req.count == 0 {
        return Err(Error::invalid("the request has no descriptors (send a message alone with kvx_agent_notify)"));
    }
    if req.src_descs.is_null() || req.dst_descs.is_null() {
        return Err(Error::invalid("a descriptor list is NULL"));
    }
    let local = slice(req.src_descs, req.count);
    let remote = slice(req.dst_descs, req.count);
    // Long lists are checked by several threads; the first bad descriptor is reported either way.
    let parts = super::parallel::slices(local.len());
    let checked = super::parallel::on_threads(parts.len(), |i| {
        let range = parts[i].clone();
        check_descriptors(range.start, &local[range.clone()], &remote[range])
    });
    let bounds = checked.into_iter().try_fold(Bounds::EMPTY, |all, part| part.map(|b| all.union(b)))?;
    let op = kvx_transfer_op::from_raw(req.op)?;
    let local_type = kvx_memory_type::from_raw(req.src_type)?;
    let remote_type = kvx_memory_type::from_raw(req.dst_type)?;
    let sync_message = if req.has_sync_message {
        if req.sync_message.is_null() && req.sync_message_len > 0 {
            return Err(Error::invalid("sync_message is NULL but sync_message_len > 0"));
        }
        if req.sync_message_len > super::wire::MAX_NOTIFICATION {
            return Err(Error::invalid(format!("sync message exceeds {} bytes", super::wire::MAX_NOTIFICATION)));
        }
        Some(slice(req.sync_message, req.sync_message_len))
    } else {
        None
    };
    Ok(TransferRequest { op, local_type, local, remote_type, remote, remote_name, sync_message, bounds })
}

/// Validate a memory-to-file copy: `count` pairs, each the same length, no
/// range that wraps, no empty piece, every descriptor open, no read past the
/// end of its file.
///
/// # Safety
/// `req.memory` and `req.files` are valid for `req.count` elements (or NULL, refused when `count` > 0).
pub unsafe fn file_copy<'a>(req: &kvx_file_copy_request) -> Result<FileCopy<'a>> {
    let kvx_file_copy_request { mem_type, memory, files, count, to_file, multi_thread, timeout_ms } = *req;
    let mem_type = kvx_memory_type::from_raw(mem_type)?;
    if count > 0 && (memory.is_null() || files.is_null()) {
        return Err(Error::invalid("a descriptor list is NULL"));
    }
    let (memory, files) = (slice(memory, count), slice(files, count));
    for (i, (m, f)) in memory.iter().zip(files).enumerate() {
        if f.fd < 0 {
            return Err(Error::invalid(format!("file descriptor {i} is {} (not an open file)", f.fd)));
        }
        if m.len != f.len {
            return Err(Error::new(
                kvx_status::KVX_ERR_SIZE_MISMATCH,
                format!("pair {i}: memory is {} bytes, the file piece {}", m.len, f.len),
            ));
        }
        if m.len == 0 {
            return Err(Error::invalid(format!("pair {i} is empty")));
        }
        m.end()?;
        // Files are addressed by signed offsets (off_t).
        let end = f.offset.checked_add(f.len).filter(|&end| end <= i64::MAX as u64).ok_or_else(|| {
            Error::invalid(format!("file piece {i} ({}+{}) passes the largest file offset", f.offset, f.len))
        })?;
        let size = file_size(f.fd).map_err(|e| Error::invalid(format!("file descriptor {i} ({}): {e}", f.fd)))?;
        // Refused here, naming the size: NIXL's POSIX plugin fails it only after posting, as a bare backend error.
        if !to_file && end > size {
            return Err(Error::invalid(format!("file piece {i} ends at byte {end}, but the file holds {size} bytes")));
        }
    }
    Ok(FileCopy {
        mem_type,
        memory,
        files,
        to_file,
        multi_thread,
        deadline: deadline(timeout_ms, default_timeout_ms()),
    })
}

fn file_size(fd: i32) -> std::io::Result<u64> {
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `stat` is valid for writing; a bad descriptor is an error, not UB.
    if unsafe { libc::fstat(fd, &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stat.st_size.max(0) as u64)
}

/// Pairwise equal lengths and no range that wraps, for descriptors `first..`
/// of a request; their bounds. The loop is branch-light: the error case is
/// found by one flag and explained afterwards.
fn check_descriptors(first: usize, local: &[kvx_memory_desc], remote: &[kvx_memory_desc]) -> Result<Bounds> {
    let mut b = Bounds::EMPTY;
    let mut bad = false;
    for (l, r) in local.iter().zip(remote) {
        let (l_end, l_wraps) = l.addr.overflowing_add(l.len);
        let (r_end, r_wraps) = r.addr.overflowing_add(r.len);
        // Transports treat an empty range differently (UCX posts nothing, NIXL may
        // fail the whole request): refuse it the same way on both.
        bad |= (l.len != r.len) | (l.len == 0) | l_wraps | r_wraps;
        b.local = (b.local.0.min(l.addr), b.local.1.max(l_end));
        b.remote = (b.remote.0.min(r.addr), b.remote.1.max(r_end));
        b.max_len = b.max_len.max(l.len);
        b.bytes = b.bytes.saturating_add(l.len);
    }
    if bad {
        for (i, (l, r)) in local.iter().zip(remote).enumerate() {
            if l.len == 0 || r.len == 0 {
                return Err(Error::invalid(format!(
                    "descriptor {} has length 0 (empty ranges are refused)",
                    first + i
                )));
            }
            if l.len != r.len {
                return Err(Error::invalid(format!(
                    "descriptor {}: local length {} differs from remote length {}",
                    first + i,
                    l.len,
                    r.len
                )));
            }
            l.end()?;
            r.end()?;
        }
    }
    Ok(b)
}

/// A deadline from a timeout argument: negative means the handle's default.
pub fn deadline(timeout_ms: i64, default_ms: u64) -> Option<Instant> {
    if timeout_ms < 0 {
        deadline_from_ms(default_ms.min(i64::MAX as u64) as i64)
    } else {
        deadline_from_ms(timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_struct_sizes_are_refused_not_torn() {
        let name = std::ffi::CString::new("agent").unwrap();
        let mut cfg = agent_config_defaults();
        cfg.name = name.as_ptr();
        let key = *b"0123456789abcdef";
        cfg.auth_key = key.as_ptr();
        cfg.auth_key_len = key.len();
        let full = std::mem::size_of::<kvx_agent_config>();
        for size in [0, 8, 12, 15, AGENT_CONFIG_V1_SIZE - 1, AGENT_CONFIG_V1_SIZE + 4, full - 1] {
            cfg.struct_size = size;
            let read = unsafe { read_versioned(&cfg, agent_config_defaults(), &[AGENT_CONFIG_V1_SIZE]) };
            assert!(read.is_err(), "size {size}");
        }
        for size in [AGENT_CONFIG_V1_SIZE, full, full + 64] {
            cfg.struct_size = size;
            let read = unsafe { read_versioned(&cfg, agent_config_defaults(), &[AGENT_CONFIG_V1_SIZE]) }.unwrap();
            assert_eq!(read.name, name.as_ptr(), "size {size}");
            // A caller compiled against the first layout never set the key: it keeps its default.
            let expected = if size == AGENT_CONFIG_V1_SIZE { std::ptr::null() } else { key.as_ptr() };
            assert_eq!(read.auth_key, expected, "size {size}");
        }
    }

    fn request_of<'a>(local: &'a [kvx_memory_desc], remote: &'a [kvx_memory_desc]) -> kvx_transfer_request {
        kvx_transfer_request::new(1, (0, local), (0, remote), c"peer", None)
    }

    #[test]
    #[cfg_attr(miri, ignore = "65k descriptors: too slow under Miri")]
    fn checked_requests_carry_their_bounds_and_report_the_first_bad_descriptor() {
        let d = |addr: u64, len: u64| kvx_memory_desc { addr, len, device_id: 0 };
        // Long enough for the checks to run on several threads.
        let n = super::super::parallel::PARALLEL_MIN * 2 + 7;
        let local: Vec<_> = (0..n as u64).map(|i| d(1000 + i * 64, 64)).collect();
        let mut remote: Vec<_> = (0..n as u64).map(|i| d(9_000_000 - i * 64, 64)).collect();
        let req = request_of(&local, &remote);
        let checked = unsafe { transfer_request(&req) }.unwrap();
        assert_eq!(checked.bounds.local, (1000, 1000 + n as u64 * 64));
        assert_eq!(checked.bounds.remote, (9_000_000 - (n as u64 - 1) * 64, 9_000_064));
        assert_eq!(checked.bounds.max_len, 64);
        assert_eq!(checked.bounds.bytes, n as u64 * 64);
        // Two bad descriptors in different slices: the lower index is named.
        remote[n - 3].len = 65;
        remote[n / 4].addr = u64::MAX - 10;
        let req = request_of(&local, &remote);
        let err = unsafe { transfer_request(&req) }.err().unwrap();
        assert!(err.message.contains("overflows"), "{}", err.message);
        remote[n / 4].addr = 5;
        let req = request_of(&local, &remote);
        let err = unsafe { transfer_request(&req) }.err().unwrap();
        assert!(err.message.contains(&format!("descriptor {}:", n - 3)), "{}", err.message);
        // A request without descriptors is refused (NIXL cannot post one), and so is an empty range.
        let empty = request_of(&[], &[]);
        assert!(unsafe { transfer_request(&empty) }.err().unwrap().message.contains("no descriptors"));
        remote[n - 3].len = 64;
        remote[n - 2].len = 0;
        let err = unsafe { transfer_request(&request_of(&local, &remote)) }.err().unwrap();
        assert!(err.message.contains(&format!("descriptor {} has length 0", n - 2)), "{}", err.message);
    }

    #[test]
    fn auth_fields_are_validated() {
        let name = std::ffi::CString::new("agent").unwrap();
        let mut cfg = agent_config_defaults();
        cfg.name = name.as_ptr();
        cfg.auth_key_len = 16;
        assert!(unsafe { agent_settings(&cfg) }.unwrap_err().message.contains("auth_key is NULL"));
        let short = *b"short";
        cfg.auth_key = short.as_ptr();
        cfg.auth_key_len = short.len();
        assert!(unsafe { agent_settings(&cfg) }.unwrap_err().message.contains("at least 16"));
        let key = *b"0123456789abcdef";
        let mut cm = cm_config_defaults();
        cm.auth_key = key.as_ptr();
        cm.auth_key_len = key.len();
        assert!(unsafe { cm_settings(&cm) }.unwrap().auth.is_enabled());
        let file = std::ffi::CString::new("/x").unwrap();
        cm.auth_key_file = file.as_ptr();
        assert!(unsafe { cm_settings(&cm) }.unwrap_err().message.contains("both"));
    }

    #[test]
    fn params_parse_with_commas_in_values() {
        assert_eq!(
            parse_params("num_workers=2; ucx_devices=a,b ;bad;=x"),
            vec![("num_workers".into(), "2".into()), ("ucx_devices".into(), "a,b".into())]
        );
    }
}
