//! Memory to and from files through NIXL's storage plugins, for TensorRT-LLM's
//! loopback agent (KV-cache offload): host memory through POSIX, device
//! memory through GDS (GDS_MT when the caller asks for several threads, the
//! other one if that cannot serve). Each plugin gets one NIXL agent per
//! process, made on first use; a plugin that cannot load, or cannot register
//! the memory or files it is given, is remembered, so the caller's fallback is
//! chosen once and not retried on every request.

use super::handle::{NixlHandle, NixlOptions, Segment};
use super::sys::*;
use crate::core::error::{kvx_status, Error, Result};
use crate::core::memory::{kvx_memory_desc, kvx_memory_type};
use crate::core::request::FileCopy;
use once_cell::sync::Lazy;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::ffi::CStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One storage plugin's agent. Requests through it are serialised: NIXL
/// refuses a region registered twice, and two requests may share memory.
type PluginAgent = std::result::Result<Arc<Mutex<NixlHandle>>, Error>;

static AGENTS: Lazy<Mutex<BTreeMap<&'static str, PluginAgent>>> = Lazy::new(|| Mutex::new(BTreeMap::new()));

/// The plugins to try for a memory type, in order, with their C names.
fn plugins(mem_type: kvx_memory_type, multi_thread: bool) -> &'static [(&'static str, &'static CStr)] {
    match (mem_type, multi_thread) {
        (kvx_memory_type::KVX_MEMORY_DRAM, _) => &[("POSIX", c"POSIX")],
        (kvx_memory_type::KVX_MEMORY_VRAM, true) => &[("GDS_MT", c"GDS_MT"), ("GDS", c"GDS")],
        (kvx_memory_type::KVX_MEMORY_VRAM, false) => &[("GDS", c"GDS"), ("GDS_MT", c"GDS_MT")],
    }
}

/// TensorRT-LLM's GDS settings for its loopback agent; POSIX keeps NIXL's defaults.
fn plugin_params(plugin: &str) -> BTreeMap<String, String> {
    let mut params = BTreeMap::new();
    if plugin.starts_with("GDS") {
        for (k, v) in [("batch_pool_size", "8"), ("batch_limit", "128"), ("max_request_size", "16777216")] {
            params.insert(k.to_owned(), v.to_owned());
        }
    }
    params
}

fn agent_for(plugin: &'static str) -> PluginAgent {
    AGENTS
        .lock()
        .entry(plugin)
        .or_insert_with(|| {
            let options = NixlOptions {
                plugin: plugin.to_owned(),
                progress_thread: false,
                listen_port: None,
                params: plugin_params(plugin),
            };
            let name = format!("kvxfer-files-{}-{plugin}", std::process::id());
            let made = NixlHandle::create(&name, &options).map(|h| Arc::new(Mutex::new(h)));
            match &made {
                Ok(_) => crate::log_at!(Info, "memory-to-file copies: NIXL {plugin} plugin"),
                Err(e) => {
                    crate::log_at!(Info, "NIXL {plugin} plugin unavailable for memory-to-file copies: {}", e.message)
                }
            }
            made
        })
        .clone()
}

/// Copy `request` through the first storage plugin that can serve it; returns its name.
pub fn copy(request: &FileCopy<'_>) -> Result<&'static CStr> {
    let mut reasons = Vec::new();
    for &(plugin, c_name) in plugins(request.mem_type, request.multi_thread) {
        match agent_for(plugin) {
            Ok(_) if request.memory.is_empty() => return Ok(c_name),
            Ok(agent) => match copy_through(&agent.lock(), request)? {
                Outcome::Done => return Ok(c_name),
                Outcome::Refused(e) => {
                    // A plugin that cannot register here (GDS without a cuFile path for the
                    // files' filesystem, say) is not asked again in this process.
                    crate::log_at!(Info, "NIXL {plugin} plugin refused memory-to-file copies: {}", e.message);
                    AGENTS.lock().insert(plugin, Err(e.clone()));
                    reasons.push(format!("{plugin}: {}", e.message));
                }
            },
            Err(e) => reasons.push(format!("{plugin}: {}", e.message)),
        }
    }
    Err(Error::new(
        kvx_status::KVX_ERR_UNSUPPORTED,
        format!("no NIXL storage plugin can serve this copy here ({})", reasons.join("; ")),
    ))
}

enum Outcome {
    Done,
    /// The plugin would not register the memory or the files: nothing moved.
    Refused(Error),
}

fn copy_through(handle: &NixlHandle, request: &FileCopy<'_>) -> Result<Outcome> {
    let memory = Segment::Memory(request.mem_type);
    // A file piece is a NIXL descriptor with the offset as address and the fd as device.
    let pieces: Vec<kvx_memory_desc> =
        request.files.iter().map(|f| kvx_memory_desc { addr: f.offset, len: f.len, device_id: f.fd as u32 }).collect();
    if let Err(e) = handle.register(memory, request.memory, true) {
        return Ok(Outcome::Refused(e));
    }
    if let Err(e) = handle.register(Segment::File, &pieces, true) {
        handle.register(memory, request.memory, false)?;
        return Ok(Outcome::Refused(e));
    }
    // Deregistered whatever happened (`and` evaluates its argument): the agent serves later requests.
    let copied = run(handle, request, &pieces).and(handle.register(Segment::File, &pieces, false));
    copied.and(handle.register(memory, request.memory, false)).map(|()| Outcome::Done)
}

fn run(handle: &NixlHandle, request: &FileCopy<'_>, pieces: &[kvx_memory_desc]) -> Result<()> {
    let op = if request.to_file { NIXL_CAPI_XFER_OP_WRITE } else { NIXL_CAPI_XFER_OP_READ };
    // A storage transfer is local: its "remote" side is this agent's own files.
    let (req, mut status) =
        handle.post(op, (request.mem_type, request.memory), (Segment::File, pieces), &handle.name, None)?;
    let mut pause = Duration::from_micros(1);
    while status == NIXL_CAPI_IN_PROG {
        if request.deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(1));
        // SAFETY: `req` was made by `post` on this handle and is released below.
        status = unsafe { handle.transfer_status(req) };
    }
    // SAFETY: as above; NIXL aborts a request still running before it returns.
    let released = unsafe { handle.release(req) };
    let what = if request.to_file { "writing memory to files" } else { "reading files into memory" };
    match status {
        NIXL_CAPI_SUCCESS => Ok(()),
        NIXL_CAPI_IN_PROG if released == NIXL_CAPI_SUCCESS => {
            Err(Error::timeout(format!("{what} through NIXL's {} plugin did not finish in time", handle.plugin)))
        }
        NIXL_CAPI_IN_PROG => Err(Error::new(
            kvx_status::KVX_ERR_INTERNAL,
            format!(
                "{what} through NIXL's {} plugin did not finish in time and could not be aborted ({})",
                handle.plugin,
                status_name(released)
            ),
        )),
        s => Err(Error::new(
            kvx_status::KVX_ERR_SYSTEM,
            format!("{what} through NIXL's {} plugin failed: NIXL returned {s} ({})", handle.plugin, status_name(s)),
        )),
    }
}
