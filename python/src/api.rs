//! The `kvxfer` Python API: Agent, Transfer, ConnectionManager, Connection,
//! Region. Every call that can block runs with the GIL released. Thread
//! safety is the C ABI's: any method from any thread, `close` excluding the rest.

use crate::errors::{invalid, to_py, OrRaise};
use crate::handles::{self, AgentHandle, AgentSettings, CmHandle, ConnId, KvxError, XferHandle};
use crate::memory::{self, find_memory, message_bytes, HeldBuffer, Pin};
use crate::sys::*;
use parking_lot::Mutex;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};
use std::collections::HashMap;
use std::sync::Arc;

pub fn parse_backend(py: Python<'_>, backend: &str) -> PyResult<u32> {
    match backend.to_ascii_lowercase().as_str() {
        "auto" | "default" | "" => Ok(KVX_BACKEND_AUTO),
        "ucx" => Ok(KVX_BACKEND_UCX),
        "nixl" => Ok(KVX_BACKEND_NIXL),
        other => Err(invalid(py, format!("backend must be 'auto', 'ucx' or 'nixl', got {other:?}"))),
    }
}

fn mem_type_arg(py: Python<'_>, t: u32) -> PyResult<u32> {
    if t == KVX_MEMORY_DRAM || t == KVX_MEMORY_VRAM {
        Ok(t)
    } else {
        Err(invalid(py, format!("memory type must be MemoryType.DRAM (0) or MemoryType.VRAM (1), got {t}")))
    }
}

/// A registered (or described) piece of memory: `addr`, `len`, `device`,
/// `mem_type`. Usable wherever a descriptor is expected; `tuple(region)` is
/// `(addr, len, device)`.
#[pyclass(module = "kvxfer", frozen, eq, hash)]
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Region {
    #[pyo3(get)]
    pub addr: u64,
    #[pyo3(get)]
    pub len: u64,
    #[pyo3(get)]
    pub device: u32,
    #[pyo3(get)]
    pub mem_type: u32,
}

impl Region {
    pub fn desc(&self) -> kvx_memory_desc {
        kvx_memory_desc { addr: self.addr, len: self.len, device_id: self.device }
    }
}

#[pymethods]
impl Region {
    #[new]
    #[pyo3(signature = (addr, len, device=0, mem_type=0))]
    fn new(py: Python<'_>, addr: u64, len: u64, device: u32, mem_type: u32) -> PyResult<Self> {
        Ok(Region { addr, len, device, mem_type: mem_type_arg(py, mem_type)? })
    }

    /// A sub-range `[offset, offset + len)` of this region (for descriptors).
    #[pyo3(signature = (offset, len=None))]
    fn slice(&self, py: Python<'_>, offset: u64, len: Option<u64>) -> PyResult<Region> {
        let len = len.unwrap_or(self.len.saturating_sub(offset));
        if offset.checked_add(len).map_or(true, |end| end > self.len) {
            return Err(invalid(py, format!("slice [{offset}, +{len}) is outside a region of {} bytes", self.len)));
        }
        Ok(Region { addr: self.addr + offset, len, device: self.device, mem_type: self.mem_type })
    }

    fn __iter__(&self, py: Python<'_>) -> PyResult<PyObject> {
        let t = PyTuple::new(py, [self.addr, self.len, u64::from(self.device)])?;
        Ok(t.call_method0("__iter__")?.unbind())
    }

    fn __repr__(&self) -> String {
        let kind = if self.mem_type == KVX_MEMORY_VRAM { "VRAM" } else { "DRAM" };
        format!("Region(addr=0x{:x}, len={}, device={}, mem_type={kind})", self.addr, self.len, self.device)
    }
}

/// Descriptors from a Region, an `(addr, len[, device])` tuple, or a list of those.
/// Returns them with the memory type the first Region names, if any.
pub fn parse_descs(obj: &Bound<'_, PyAny>) -> PyResult<(Vec<kvx_memory_desc>, Option<u32>)> {
    let single = |item: &Bound<'_, PyAny>| -> PyResult<(kvx_memory_desc, Option<u32>)> {
        if let Ok(r) = item.downcast::<Region>() {
            let r = r.get();
            return Ok((r.desc(), Some(r.mem_type)));
        }
        if let Ok(t) = item.downcast::<PyTuple>() {
            return Ok((memory::desc_from_tuple(t)?, None));
        }
        Err(PyTypeError::new_err(format!(
            "a descriptor is a Region or an (addr, len[, device]) tuple, not {}",
            item.get_type().name().map(|n| n.to_string()).unwrap_or_default()
        )))
    };
    let is_single_tuple = obj
        .downcast::<PyTuple>()
        .is_ok_and(|t| t.get_item(0).is_ok_and(|i| !i.is_instance_of::<PyTuple>() && !i.is_instance_of::<Region>()));
    if obj.downcast::<Region>().is_ok() || is_single_tuple {
        let (d, t) = single(obj)?;
        return Ok((vec![d], t));
    }
    if obj.is_instance_of::<pyo3::types::PyString>() || obj.is_none() {
        return Err(PyTypeError::new_err("descriptors must be a Region, a tuple or a list of them"));
    }
    let mut out = Vec::new();
    let mut first_type = None;
    for (i, item) in obj
        .try_iter()
        .map_err(|_| PyTypeError::new_err("descriptors must be a Region, a tuple or a list of them"))?
        .enumerate()
    {
        let (d, t) = single(&item?).map_err(|e| {
            Python::with_gil(|py| {
                let msg = format!("descriptor {i}: {}", e.value(py));
                PyErr::from_type(e.get_type(py), msg)
            })
        })?;
        if i == 0 {
            first_type = t;
        }
        out.push(d);
    }
    Ok((out, first_type))
}

fn op_arg(py: Python<'_>, op: &Bound<'_, PyAny>) -> PyResult<u32> {
    if let Ok(s) = op.extract::<String>() {
        return match s.to_ascii_lowercase().as_str() {
            "read" => Ok(KVX_OP_READ),
            "write" => Ok(KVX_OP_WRITE),
            _ => Err(invalid(py, format!("op must be 'read' or 'write', got {s:?}"))),
        };
    }
    match memory::int_u32(op, "op")? {
        v @ (KVX_OP_READ | KVX_OP_WRITE) => Ok(v),
        v => Err(invalid(py, format!("op must be READ (0) or WRITE (1), got {v}"))),
    }
}

/// A peer-to-peer transfer agent (TensorRT-LLM's transfer agent over kvxfer).
///
/// `Agent(name, backend="auto", listen=True, ...)`; use as a context manager
/// or call `close()`. Memory passed to `register` stays pinned until
/// `deregister` or `close`.
#[pyclass(module = "kvxfer")]
pub struct Agent {
    handle: Arc<AgentHandle>,
    #[pyo3(get)]
    name: String,
    pins: Mutex<HashMap<(u32, kvx_memory_desc), Vec<Pin>>>,
}

#[pymethods]
impl Agent {
    #[new]
    #[pyo3(signature = (name, *, backend="auto", listen=true, listen_ip=None, listen_port=0, timeout_ms=0,
                        progress_thread=None, num_workers=0, backend_params=None))]
    #[allow(clippy::too_many_arguments)] // each is a Python keyword argument of Agent()
    fn new(
        py: Python<'_>,
        name: String,
        backend: &str,
        listen: bool,
        listen_ip: Option<String>,
        listen_port: u16,
        timeout_ms: u64,
        progress_thread: Option<bool>,
        num_workers: u32,
        backend_params: Option<HashMap<String, String>>,
    ) -> PyResult<Self> {
        let params = backend_params.map(|p| {
            let mut entries: Vec<_> = p.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
            entries.sort();
            entries.join(";")
        });
        let settings = AgentSettings {
            name: name.clone(),
            backend: parse_backend(py, backend)?,
            use_listen_thread: listen,
            listen_ip,
            listen_port,
            timeout_ms,
            progress_thread: match progress_thread {
                None => 0,
                Some(true) => 1,
                Some(false) => 2,
            },
            num_workers,
            backend_params: params,
        };
        let handle = py.allow_threads(|| AgentHandle::create(&settings)).or_raise(py)?;
        Ok(Agent { handle: Arc::new(handle), name, pins: Mutex::new(HashMap::new()) })
    }

    /// The backend this agent uses: "ucx" or "nixl".
    #[getter]
    fn backend(&self, py: Python<'_>) -> PyResult<&'static str> {
        Ok(handles::backend_name(self.handle.backend().or_raise(py)?))
    }

    #[getter]
    fn closed(&self) -> bool {
        self.handle.is_closed()
    }

    /// Register `obj`'s memory for remote access and return its Region. `obj`
    /// is a writable buffer (bytearray, numpy array, memoryview), an object
    /// with `__cuda_array_interface__` or `__dlpack__`, or an `(addr, len,
    /// device)` tuple (the caller keeps that memory alive). `mem_type` /
    /// `device` override what the object says.
    #[pyo3(signature = (obj, mem_type=None, device=None))]
    fn register(
        &self,
        py: Python<'_>,
        obj: &Bound<'_, PyAny>,
        mem_type: Option<u32>,
        device: Option<u32>,
    ) -> PyResult<Region> {
        let found = find_memory(obj, mem_type, device)?;
        let mem_type = mem_type_arg(py, found.mem_type)?;
        let desc = found.desc;
        let h = self.handle.clone();
        py.allow_threads(|| h.register(mem_type, &[desc])).or_raise(py)?;
        self.pins.lock().entry((mem_type, desc)).or_default().push(found.pin);
        Ok(Region { addr: desc.addr, len: desc.len, device: desc.device_id, mem_type })
    }

    /// Deregister a Region returned by `register` (one registration of it).
    fn deregister(&self, py: Python<'_>, region: &Bound<'_, PyAny>) -> PyResult<()> {
        let (descs, t) = parse_descs(region)?;
        let mem_type = mem_type_arg(py, t.unwrap_or(KVX_MEMORY_DRAM))?;
        let h = self.handle.clone();
        let d = descs.clone();
        py.allow_threads(|| h.deregister(mem_type, &d)).or_raise(py)?;
        let released: Vec<Pin> = {
            let mut pins = self.pins.lock();
            descs
                .iter()
                .filter_map(|desc| {
                    let list = pins.get_mut(&(mem_type, *desc))?;
                    let pin = list.pop();
                    if list.is_empty() {
                        pins.remove(&(mem_type, *desc));
                    }
                    pin
                })
                .collect()
        };
        drop(released);
        Ok(())
    }

    /// This agent's descriptor (bytes for a peer's `load_remote`).
    fn local_desc<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let h = self.handle.clone();
        let d = py.allow_threads(|| h.local_desc()).or_raise(py)?;
        Ok(PyBytes::new(py, &d))
    }

    /// This agent's counters and latency histograms, per agent and per peer, as a
    /// dict (kvxfer's JSON snapshot; docs/observability.md lists the fields).
    fn stats(&self, py: Python<'_>) -> PyResult<PyObject> {
        let h = self.handle.clone();
        let text = py.allow_threads(|| h.stats()).or_raise(py)?;
        json_loads(py, &text)
    }

    /// This agent's listener address "ip:port" ("" without a listener).
    fn connection_info(&self, py: Python<'_>) -> PyResult<String> {
        let h = self.handle.clone();
        py.allow_threads(|| h.connection_info()).or_raise(py)
    }

    /// Load peer `name` from its descriptor bytes (validated; a bad one raises MalformedError).
    fn load_remote(&self, py: Python<'_>, name: String, desc: &Bound<'_, PyAny>) -> PyResult<()> {
        let desc = message_bytes(desc)?;
        let h = self.handle.clone();
        py.allow_threads(|| h.load_remote(&name, &desc)).or_raise(py)
    }

    /// Load peer `name` by contacting its listener at `connection_info` ("ip:port").
    #[pyo3(signature = (name, connection_info, timeout_ms=-1))]
    fn load_remote_by_connection(
        &self,
        py: Python<'_>,
        name: String,
        connection_info: String,
        timeout_ms: i64,
    ) -> PyResult<()> {
        let h = self.handle.clone();
        py.allow_threads(|| h.load_remote_by_connection(&name, &connection_info, timeout_ms)).or_raise(py)
    }

    /// Forget peer `name`; its transfers in flight fail. NotFoundError if unknown.
    fn invalidate_remote(&self, py: Python<'_>, name: String) -> PyResult<()> {
        let h = self.handle.clone();
        py.allow_threads(|| h.invalidate(&name)).or_raise(py)
    }

    /// Whether peer `name` is loaded and registered every descriptor's memory with type `mem_type`.
    #[pyo3(signature = (name, descs, mem_type=None))]
    fn check_remote_descs(
        &self,
        py: Python<'_>,
        name: String,
        descs: &Bound<'_, PyAny>,
        mem_type: Option<u32>,
    ) -> PyResult<bool> {
        let (descs, t) = parse_descs(descs)?;
        let mem_type = mem_type_arg(py, mem_type.or(t).unwrap_or(KVX_MEMORY_DRAM))?;
        let h = self.handle.clone();
        py.allow_threads(|| h.check_remote_descs(&name, mem_type, &descs)).or_raise(py)
    }

    /// Post a READ or WRITE between `local` (registered here) and `remote`
    /// (registered by `remote_name`), pairwise; `sync_message` reaches the peer
    /// after the data. `op` is "read"/"write" or TransferOp.
    #[pyo3(signature = (op, local, remote, remote_name, sync_message=None, local_type=None, remote_type=None))]
    #[allow(clippy::too_many_arguments)] // each is a Python argument of submit()
    fn submit(
        &self,
        py: Python<'_>,
        op: &Bound<'_, PyAny>,
        local: &Bound<'_, PyAny>,
        remote: &Bound<'_, PyAny>,
        remote_name: String,
        sync_message: Option<&Bound<'_, PyAny>>,
        local_type: Option<u32>,
        remote_type: Option<u32>,
    ) -> PyResult<Transfer> {
        let op = op_arg(py, op)?;
        let (src, st) = parse_descs(local)?;
        let (dst, dt) = parse_descs(remote)?;
        let st = mem_type_arg(py, local_type.or(st).unwrap_or(KVX_MEMORY_DRAM))?;
        let dt = mem_type_arg(py, remote_type.or(dt).unwrap_or(KVX_MEMORY_DRAM))?;
        let msg = sync_message.map(message_bytes).transpose()?;
        let h = self.handle.clone();
        let x = py.allow_threads(|| h.submit(op, st, &src, dt, &dst, &remote_name, msg.as_deref())).or_raise(py)?;
        Ok(Transfer { handle: Arc::new(x) })
    }

    /// `submit("write", ...)`.
    #[pyo3(signature = (local, remote, remote_name, sync_message=None))]
    fn write(
        &self,
        py: Python<'_>,
        local: &Bound<'_, PyAny>,
        remote: &Bound<'_, PyAny>,
        remote_name: String,
        sync_message: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Transfer> {
        let op = KVX_OP_WRITE.into_pyobject(py)?.into_any();
        self.submit(py, &op, local, remote, remote_name, sync_message, None, None)
    }

    /// `submit("read", ...)`.
    #[pyo3(signature = (local, remote, remote_name))]
    fn read(
        &self,
        py: Python<'_>,
        local: &Bound<'_, PyAny>,
        remote: &Bound<'_, PyAny>,
        remote_name: String,
    ) -> PyResult<Transfer> {
        let op = KVX_OP_READ.into_pyobject(py)?.into_any();
        self.submit(py, &op, local, remote, remote_name, None, None, None)
    }

    /// Send a binary notification to agent `name` (loaded, or this agent itself).
    fn notify(&self, py: Python<'_>, name: String, message: &Bound<'_, PyAny>) -> PyResult<()> {
        let msg = message_bytes(message)?;
        let h = self.handle.clone();
        py.allow_threads(|| h.notify(&name, &msg)).or_raise(py)
    }

    /// Every notification received since the last call: a list of `(sender, bytes)`, oldest first.
    fn get_notifications<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let h = self.handle.clone();
        let list = py.allow_threads(|| h.notifications()).or_raise(py)?;
        let items = list
            .into_iter()
            .map(|n| {
                PyTuple::new(py, [n.sender.into_pyobject(py)?.into_any(), PyBytes::new(py, &n.message).into_any()])
            })
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, items)
    }

    /// Destroy the agent: listener and connections closed, memory deregistered and unpinned.
    fn close(&self, py: Python<'_>) {
        let h = self.handle.clone();
        py.allow_threads(|| h.close());
        let pins = std::mem::take(&mut *self.pins.lock());
        drop(pins);
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, PyTuple>) -> bool {
        self.close(py);
        false
    }

    fn __repr__(&self) -> String {
        format!("Agent(name={:?}{})", self.name, if self.handle.is_closed() { ", closed" } else { "" })
    }
}

/// State of a transfer.
#[pyclass(module = "kvxfer", eq, eq_int, frozen, hash)]
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types, clippy::upper_case_acronyms)]
pub enum TransferState {
    IN_PROGRESS = 0,
    SUCCESS = 1,
    FAILURE = 2,
}

enum_name_value!(TransferState { IN_PROGRESS, SUCCESS, FAILURE });

pub fn state_from(v: u32) -> TransferState {
    match v {
        0 => TransferState::IN_PROGRESS,
        1 => TransferState::SUCCESS,
        _ => TransferState::FAILURE,
    }
}

/// The status code a failed transfer's text starts with ("KVX_ERR_PEER: ...").
pub fn failure_error(text: &str) -> KvxError {
    let code = (-15..=-1).find(|c| text.starts_with(&format!("{}:", handles::status_name(*c)))).unwrap_or(-7);
    KvxError::new(code, text)
}

/// One submitted transfer. `wait(timeout_ms)` releases the GIL.
#[pyclass(module = "kvxfer")]
pub struct Transfer {
    handle: Arc<XferHandle>,
}

#[pymethods]
impl Transfer {
    /// Wait up to `timeout_ms` (-1: until the transfer's own deadline).
    /// Returns TransferState.SUCCESS, or IN_PROGRESS when the time ran out;
    /// a failed transfer raises the error of its cause (PeerError, TimeoutError, ...).
    #[pyo3(signature = (timeout_ms=-1))]
    fn wait(&self, py: Python<'_>, timeout_ms: i64) -> PyResult<TransferState> {
        let h = self.handle.clone();
        let state = py.allow_threads(|| h.wait(timeout_ms)).or_raise(py)?;
        match state_from(state) {
            TransferState::FAILURE => {
                let text = self.handle.last_status().or_raise(py)?;
                Err(to_py(py, failure_error(&text)))
            }
            s => Ok(s),
        }
    }

    /// Whether the transfer completed successfully (never blocks).
    fn is_completed(&self, py: Python<'_>) -> PyResult<bool> {
        self.handle.is_completed().or_raise(py)
    }

    /// Text of the state: "in progress", "success" or the failure.
    #[getter]
    fn status(&self, py: Python<'_>) -> PyResult<String> {
        self.handle.last_status().or_raise(py)
    }

    /// Free the transport resources of a finished transfer; False while in flight.
    fn release(&self, py: Python<'_>) -> PyResult<bool> {
        self.handle.release().or_raise(py)
    }

    /// Free the handle (a transfer in flight still runs to its end).
    fn close(&self) {
        self.handle.close()
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, _args: &Bound<'_, PyTuple>) -> bool {
        self.close();
        false
    }
}

/// Two-sided, tag-matched messaging (TensorRT-LLM's connection manager).
#[pyclass(module = "kvxfer")]
pub struct ConnectionManager {
    handle: Arc<CmHandle>,
}

#[pymethods]
impl ConnectionManager {
    #[new]
    #[pyo3(signature = (*, backend="auto", listen_ip=None, listen_port=0, timeout_ms=0))]
    fn new(
        py: Python<'_>,
        backend: &str,
        listen_ip: Option<String>,
        listen_port: u16,
        timeout_ms: u64,
    ) -> PyResult<Self> {
        let backend = parse_backend(py, backend)?;
        let h = py
            .allow_threads(|| CmHandle::create(backend, listen_ip.as_deref(), listen_port, timeout_ms))
            .or_raise(py)?;
        Ok(ConnectionManager { handle: Arc::new(h) })
    }

    #[getter]
    fn backend(&self, py: Python<'_>) -> PyResult<&'static str> {
        Ok(handles::backend_name(self.handle.backend().or_raise(py)?))
    }

    /// This manager's counters, per manager and per peer address, as a dict.
    fn stats(&self, py: Python<'_>) -> PyResult<PyObject> {
        let h = self.handle.clone();
        let text = py.allow_threads(|| h.stats()).or_raise(py)?;
        json_loads(py, &text)
    }

    /// This manager's "ip:port", what peers pass to `get_connections`.
    #[getter]
    fn address(&self, py: Python<'_>) -> PyResult<String> {
        self.handle.local_address().or_raise(py)
    }

    /// One Connection per address, connecting where needed.
    #[pyo3(signature = (addresses, timeout_ms=-1))]
    fn get_connections(&self, py: Python<'_>, addresses: Vec<String>, timeout_ms: i64) -> PyResult<Vec<Connection>> {
        let h = self.handle.clone();
        let ids = py.allow_threads(|| h.get_connections(&addresses, timeout_ms)).or_raise(py)?;
        Ok(ids.into_iter().map(|id| Connection { cm: self.handle.clone(), id }).collect())
    }

    /// Wait for the first message with `tag` from any peer. `buffer` is a size
    /// (a bytes object of that size is returned) or a writable buffer filled in
    /// place (then None is returned). Returns `(Connection, data)`.
    #[pyo3(signature = (tag, buffer, timeout_ms=-1))]
    fn recv_connect(
        &self,
        py: Python<'_>,
        tag: u32,
        buffer: &Bound<'_, PyAny>,
        timeout_ms: i64,
    ) -> PyResult<(Connection, PyObject)> {
        let h = self.handle.clone();
        let (id, data) = recv_into(py, buffer, |ptr, len| {
            // SAFETY: `ptr` is writable for `len` bytes for the whole call.
            unsafe { h.recv_connect(tag, ptr, len, timeout_ms) }
        })?;
        Ok((Connection { cm: self.handle.clone(), id }, data))
    }

    #[getter]
    fn is_running(&self, py: Python<'_>) -> PyResult<bool> {
        self.handle.is_running().or_raise(py)
    }

    /// Stop: blocked and later calls fail with CanceledError.
    fn shutdown(&self, py: Python<'_>) -> PyResult<()> {
        self.handle.shutdown().or_raise(py)
    }

    /// Destroy the manager and its connections.
    fn close(&self, py: Python<'_>) {
        let h = self.handle.clone();
        py.allow_threads(|| h.close())
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, PyTuple>) -> bool {
        self.close(py);
        false
    }
}

/// Receive into a fresh bytes object (`buffer` is an int) or into a writable buffer.
fn recv_into<T: Send>(
    py: Python<'_>,
    buffer: &Bound<'_, PyAny>,
    call: impl FnOnce(*mut u8, usize) -> handles::KvxResult<T> + Send,
) -> PyResult<(T, PyObject)> {
    struct SendPtr(*mut u8);
    // SAFETY: the pointer targets memory held for the duration of the call.
    unsafe impl Send for SendPtr {}
    if buffer.downcast::<pyo3::types::PyInt>().is_ok() {
        let size = usize::try_from(memory::int_u64(buffer, "size")?).map_err(|_| invalid(py, "size too large"))?;
        let mut data = vec![0u8; size];
        let p = SendPtr(data.as_mut_ptr());
        let out = py
            .allow_threads(move || {
                let p = p;
                call(p.0, size)
            })
            .or_raise(py)?;
        return Ok((out, PyBytes::new(py, &data).into_any().unbind()));
    }
    let held = HeldBuffer::get(buffer, true)?;
    let (p, len) = (SendPtr(held.ptr()), held.len());
    let out = py
        .allow_threads(move || {
            let p = p;
            call(p.0, len)
        })
        .or_raise(py)?;
    drop(held);
    Ok((out, py.None()))
}

/// A connection to one peer, owned by its ConnectionManager.
#[pyclass(module = "kvxfer", frozen)]
#[derive(Clone)]
pub struct Connection {
    cm: Arc<CmHandle>,
    id: ConnId,
}

#[pymethods]
impl Connection {
    /// Send `data` (bytes-like, or an `(addr, len[, device])` tuple of host or
    /// device memory) with `tag`; returns when the buffer may be reused.
    #[pyo3(signature = (tag, data, timeout_ms=-1))]
    fn send(&self, py: Python<'_>, tag: u32, data: &Bound<'_, PyAny>, timeout_ms: i64) -> PyResult<()> {
        struct SendPtr(*const u8);
        // SAFETY: the memory stays valid for the call (held buffer or caller's raw memory).
        unsafe impl Send for SendPtr {}
        let cm = self.cm.clone();
        let id = self.id;
        if let Ok(t) = data.downcast::<PyTuple>() {
            let d = memory::desc_from_tuple(t)?;
            let len = usize::try_from(d.len).map_err(|_| invalid(py, "len too large"))?;
            let p = SendPtr(d.addr as *const u8);
            // SAFETY: the caller vouches for raw memory it names.
            return py
                .allow_threads(move || {
                    let p = p;
                    unsafe { cm.send(id, tag, p.0, len, timeout_ms) }
                })
                .or_raise(py);
        }
        let held = HeldBuffer::get(data, false)?;
        let (p, len) = (SendPtr(held.ptr()), held.len());
        let r = py.allow_threads(move || {
            let p = p;
            // SAFETY: the held export keeps the buffer valid.
            unsafe { cm.send(id, tag, p.0, len, timeout_ms) }
        });
        drop(held);
        r.or_raise(py)
    }

    /// Receive exactly the size of `buffer` (an int: returns bytes; a writable buffer: filled, returns None).
    #[pyo3(signature = (tag, buffer, timeout_ms=-1))]
    fn recv(&self, py: Python<'_>, tag: u32, buffer: &Bound<'_, PyAny>, timeout_ms: i64) -> PyResult<PyObject> {
        let cm = self.cm.clone();
        let id = self.id;
        let ((), data) = recv_into(py, buffer, move |ptr, len| {
            // SAFETY: `ptr` is writable for `len` bytes for the whole call.
            unsafe { cm.recv(id, tag, ptr, len, timeout_ms) }
        })?;
        Ok(data)
    }

    /// The peer manager's "ip:port".
    #[getter]
    fn peer_address(&self, py: Python<'_>) -> PyResult<String> {
        self.cm.peer_address(self.id).or_raise(py)
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other.downcast::<Connection>().is_ok_and(|o| o.get().id == self.id)
    }

    fn __hash__(&self) -> u64 {
        self.id.0 as u64
    }
}

/// Which backend `backend` ("auto", "ucx", "nixl") resolves to, without loading it.
#[pyfunction]
#[pyo3(signature = (backend="auto"))]
pub fn resolve_backend(py: Python<'_>, backend: &str) -> PyResult<&'static str> {
    let b = parse_backend(py, backend)?;
    Ok(handles::backend_name(handles::resolve_backend(b).or_raise(py)?))
}

/// Load the backend `backend` resolves to and describe it: a dict with
/// `backend`, `name`, `library_path`, `library_version`. BackendUnavailableError
/// (with an install hint) when its library is missing.
#[pyfunction]
#[pyo3(signature = (backend="auto"))]
pub fn backend_info(py: Python<'_>, backend: &str) -> PyResult<HashMap<&'static str, String>> {
    let b = parse_backend(py, backend)?;
    let info = py.allow_threads(|| handles::backend_info(b)).or_raise(py)?;
    Ok(HashMap::from([
        ("backend", handles::backend_name(info.backend).to_string()),
        ("name", info.name),
        ("library_path", info.library_path),
        ("library_version", info.library_version),
    ]))
}

/// Every agent's and manager's counters in this process, as a dict.
#[pyfunction]
pub fn stats_snapshot(py: Python<'_>) -> PyResult<PyObject> {
    let text = handles::stats_snapshot().or_raise(py)?;
    json_loads(py, &text)
}

/// "ip:port" of this process's metrics endpoint (KVX_METRICS_ADDR), "" when off.
#[pyfunction]
pub fn metrics_address(py: Python<'_>) -> PyResult<String> {
    handles::metrics_address().or_raise(py)
}

/// kvxfer's snapshots are JSON documents; the standard library parses them.
fn json_loads(py: Python<'_>, text: &str) -> PyResult<PyObject> {
    Ok(py.import("json")?.call_method1("loads", (text,))?.unbind())
}

/// kvxfer's version, as the loaded libkvxfer reports it.
#[pyfunction]
pub fn library_version() -> String {
    handles::version()
}

/// Path of the libkvxfer this module is linked against.
#[pyfunction]
pub fn library_path() -> String {
    let mut info: libc_dl::DlInfo = unsafe { std::mem::zeroed() };
    // SAFETY: dladdr reads loader data for a symbol of libkvxfer.
    unsafe {
        if libc_dl::dladdr(kvx_version as *const std::ffi::c_void, &mut info) != 0 && !info.fname.is_null() {
            return handles::cstr(info.fname);
        }
    }
    String::new()
}

mod libc_dl {
    use std::ffi::{c_char, c_int, c_void};
    #[repr(C)]
    pub struct DlInfo {
        pub fname: *const c_char,
        pub fbase: *mut c_void,
        pub sname: *const c_char,
        pub saddr: *mut c_void,
    }
    extern "C" {
        pub fn dladdr(addr: *const c_void, info: *mut DlInfo) -> c_int;
    }
}
