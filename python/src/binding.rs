//! `tensorrt_llm_transfer_agent_binding`: the API of TensorRT-LLM's Python
//! transfer-agent binding (its newest release), served by kvxfer on the
//! backend the environment selects. Blocking calls release the GIL.

use crate::api::parse_descs;
use crate::errors::{invalid, OrRaise};
use crate::handles::{AgentHandle, AgentSettings, XferHandle};
use crate::memory::{int_u32, int_u64, message_bytes};
use crate::sys::*;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString, PyTuple};
use std::collections::HashMap;
use std::sync::Arc;

#[pyclass(module = "tensorrt_llm_transfer_agent_binding", eq, eq_int, frozen, hash)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[allow(clippy::upper_case_acronyms)] // the variants are TensorRT-LLM's own names (DRAM, VRAM, ...)
pub enum MemoryType {
    DRAM = 0,
    VRAM = 1,
    BLK = 2,
    OBJ = 3,
    FILE = 4,
}

impl MemoryType {
    fn kvx(self, py: Python<'_>) -> PyResult<u32> {
        match self {
            MemoryType::DRAM => Ok(KVX_MEMORY_DRAM),
            MemoryType::VRAM => Ok(KVX_MEMORY_VRAM),
            other => {
                Err(invalid(py, format!("MemoryType.{other:?} memory cannot be registered or transferred by kvxfer")))
            }
        }
    }
}

#[pyclass(module = "tensorrt_llm_transfer_agent_binding", eq, eq_int, frozen, hash)]
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
#[allow(clippy::upper_case_acronyms)] // the variants are TensorRT-LLM's own names (READ, WRITE)
pub enum TransferOp {
    READ = 0,
    WRITE = 1,
}

#[pyclass(module = "tensorrt_llm_transfer_agent_binding", eq, eq_int, frozen, hash)]
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types, clippy::upper_case_acronyms)]
pub enum TransferState {
    IN_PROGRESS = 0,
    SUCCESS = 1,
    FAILURE = 2,
}

enum_name_value!(MemoryType { DRAM, VRAM, BLK, OBJ, FILE });
enum_name_value!(TransferOp { READ, WRITE });
enum_name_value!(TransferState { IN_PROGRESS, SUCCESS, FAILURE });

#[pyclass(module = "tensorrt_llm_transfer_agent_binding", frozen)]
#[derive(Clone)]
pub struct MemoryDesc {
    #[pyo3(get)]
    addr: u64,
    #[pyo3(get)]
    len: u64,
    #[pyo3(get)]
    device_id: u32,
}

#[pymethods]
impl MemoryDesc {
    #[new]
    fn new(addr: &Bound<'_, PyAny>, len: &Bound<'_, PyAny>, device_id: &Bound<'_, PyAny>) -> PyResult<Self> {
        Ok(MemoryDesc {
            addr: int_u64(addr, "addr")?,
            len: int_u64(len, "len")?,
            device_id: int_u32(device_id, "device_id")?,
        })
    }

    fn __repr__(&self) -> String {
        format!("MemoryDesc(addr=0x{:x}, len={}, device_id={})", self.addr, self.len, self.device_id)
    }
}

impl MemoryDesc {
    fn kvx(&self) -> kvx_memory_desc {
        kvx_memory_desc { addr: self.addr, len: self.len, device_id: self.device_id }
    }
}

#[pyclass(module = "tensorrt_llm_transfer_agent_binding", frozen)]
#[derive(Clone)]
pub struct MemoryDescs {
    mem_type: MemoryType,
    descs: Vec<kvx_memory_desc>,
}

/// int64 / int32 values from a numpy array (buffer protocol) or any sequence of ints.
fn int_array(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<i64>> {
    if let Ok(buf) = pyo3::buffer::PyBuffer::<i64>::get(obj) {
        return buf.to_vec(obj.py());
    }
    if let Ok(buf) = pyo3::buffer::PyBuffer::<i32>::get(obj) {
        return Ok(buf.to_vec(obj.py())?.into_iter().map(i64::from).collect());
    }
    if obj.is_instance_of::<PyString>() {
        return Err(PyTypeError::new_err(format!("{what} must be an array of ints")));
    }
    obj.try_iter()
        .map_err(|_| PyTypeError::new_err(format!("{what} must be an array of ints")))?
        .map(|i| i.and_then(|i| i.extract::<i64>()))
        .collect()
}

fn non_negative(py: Python<'_>, v: i64, what: &str, i: usize) -> PyResult<u64> {
    u64::try_from(v).map_err(|_| invalid(py, format!("{what}[{i}] is negative ({v})")))
}

#[pymethods]
impl MemoryDescs {
    /// `MemoryDescs(type, descs)`: a list of MemoryDesc or of `(addr, len, device_id)` tuples.
    #[new]
    fn new(mem_type: MemoryType, descs: &Bound<'_, PyAny>) -> PyResult<Self> {
        let mut out = Vec::new();
        for (i, item) in descs.try_iter().map_err(|_| PyTypeError::new_err("descs must be a list"))?.enumerate() {
            let item = item?;
            if let Ok(d) = item.downcast::<MemoryDesc>() {
                out.push(d.get().kvx());
            } else if let Ok(t) = item.downcast::<PyTuple>() {
                out.push(crate::memory::desc_from_tuple(t)?);
            } else {
                return Err(PyTypeError::new_err(format!(
                    "descs[{i}] must be a MemoryDesc or an (addr, len, device_id) tuple"
                )));
            }
        }
        Ok(MemoryDescs { mem_type, descs: out })
    }

    #[staticmethod]
    fn from_arrays(
        py: Python<'_>,
        mem_type: MemoryType,
        addrs: &Bound<'_, PyAny>,
        sizes: &Bound<'_, PyAny>,
        device_ids: &Bound<'_, PyAny>,
    ) -> PyResult<Self> {
        let (a, s, d) = (int_array(addrs, "addrs")?, int_array(sizes, "sizes")?, int_array(device_ids, "device_ids")?);
        if a.len() != s.len() || a.len() != d.len() {
            return Err(invalid(
                py,
                format!("addrs, sizes and device_ids have {}, {} and {} entries", a.len(), s.len(), d.len()),
            ));
        }
        let mut descs = Vec::with_capacity(a.len());
        for i in 0..a.len() {
            let device_id =
                u32::try_from(d[i]).map_err(|_| invalid(py, format!("device_ids[{i}] is out of range ({})", d[i])))?;
            descs.push(kvx_memory_desc {
                addr: non_negative(py, a[i], "addrs", i)?,
                len: non_negative(py, s[i], "sizes", i)?,
                device_id,
            });
        }
        Ok(MemoryDescs { mem_type, descs })
    }

    #[staticmethod]
    fn from_arrays_uniform_device(
        py: Python<'_>,
        mem_type: MemoryType,
        addrs: &Bound<'_, PyAny>,
        sizes: &Bound<'_, PyAny>,
        device_id: &Bound<'_, PyAny>,
    ) -> PyResult<Self> {
        let (a, s) = (int_array(addrs, "addrs")?, int_array(sizes, "sizes")?);
        let device_id = int_u32(device_id, "device_id")?;
        if a.len() != s.len() {
            return Err(invalid(py, format!("addrs and sizes have {} and {} entries", a.len(), s.len())));
        }
        let descs = (0..a.len())
            .map(|i| {
                Ok(kvx_memory_desc {
                    addr: non_negative(py, a[i], "addrs", i)?,
                    len: non_negative(py, s[i], "sizes", i)?,
                    device_id,
                })
            })
            .collect::<PyResult<Vec<_>>>()?;
        Ok(MemoryDescs { mem_type, descs })
    }

    #[getter(r#type)]
    fn get_type(&self) -> MemoryType {
        self.mem_type
    }

    #[getter]
    fn descs(&self) -> Vec<MemoryDesc> {
        self.descs.iter().map(|d| MemoryDesc { addr: d.addr, len: d.len, device_id: d.device_id }).collect()
    }

    fn __len__(&self) -> usize {
        self.descs.len()
    }
}

const AGENT_DESC_MAGIC: &[u8; 4] = b"KVXA";
const AGENT_DESC_VERSION: u8 = 1;

/// An agent descriptor. `serialize()` is what TensorRT-LLM's Python agent
/// sends to its peer: a versioned frame around kvxfer's descriptor bytes.
#[pyclass(module = "tensorrt_llm_transfer_agent_binding", frozen)]
#[derive(Clone)]
pub struct AgentDesc {
    desc: Vec<u8>,
}

#[pymethods]
impl AgentDesc {
    #[new]
    fn new(backend_agent_desc: &Bound<'_, PyAny>) -> PyResult<Self> {
        Ok(AgentDesc { desc: message_bytes(backend_agent_desc)? })
    }

    #[getter]
    fn backend_agent_desc<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.desc)
    }

    fn serialize<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        let mut out = Vec::with_capacity(13 + self.desc.len());
        out.extend_from_slice(AGENT_DESC_MAGIC);
        out.push(AGENT_DESC_VERSION);
        out.extend_from_slice(&(self.desc.len() as u64).to_le_bytes());
        out.extend_from_slice(&self.desc);
        PyBytes::new(py, &out)
    }

    /// Parse `serialize()`'s bytes (untrusted: framing checked; the descriptor
    /// itself is validated by kvxfer when loaded).
    #[staticmethod]
    fn deserialize(py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<Self> {
        let data = message_bytes(data)?;
        if data.len() < 13 || &data[..4] != AGENT_DESC_MAGIC {
            return Err(invalid(py, "not a serialized kvxfer AgentDesc"));
        }
        if data[4] != AGENT_DESC_VERSION {
            return Err(invalid(
                py,
                format!(
                    "AgentDesc format version {} is not supported (this build reads {AGENT_DESC_VERSION})",
                    data[4]
                ),
            ));
        }
        let len = u64::from_le_bytes(data[5..13].try_into().unwrap());
        if len != (data.len() - 13) as u64 {
            return Err(invalid(py, format!("AgentDesc says {len} bytes but carries {}", data.len() - 13)));
        }
        Ok(AgentDesc { desc: data[13..].to_vec() })
    }
}

#[pyclass(module = "tensorrt_llm_transfer_agent_binding", frozen)]
pub struct TransferRequest {
    #[pyo3(get)]
    op: TransferOp,
    #[pyo3(get)]
    src_descs: Py<MemoryDescs>,
    #[pyo3(get)]
    dst_descs: Py<MemoryDescs>,
    #[pyo3(get)]
    remote_name: String,
    #[pyo3(get)]
    sync_message: Option<PyObject>,
}

#[pymethods]
impl TransferRequest {
    #[new]
    #[pyo3(signature = (op, src_descs, dst_descs, remote_name, sync_message=None))]
    fn new(
        op: TransferOp,
        src_descs: Py<MemoryDescs>,
        dst_descs: Py<MemoryDescs>,
        remote_name: String,
        sync_message: Option<PyObject>,
    ) -> Self {
        TransferRequest { op, src_descs, dst_descs, remote_name, sync_message }
    }
}

#[pyclass(module = "tensorrt_llm_transfer_agent_binding", subclass)]
pub struct TransferStatus {
    handle: Arc<XferHandle>,
}

#[pymethods]
impl TransferStatus {
    fn is_completed(&self, py: Python<'_>) -> PyResult<bool> {
        let h = self.handle.clone();
        py.allow_threads(|| h.is_completed()).or_raise(py)
    }

    /// Wait up to `timeout_ms` (-1: until the transfer's deadline); IN_PROGRESS on timeout.
    #[pyo3(signature = (timeout_ms=-1))]
    fn wait(&self, py: Python<'_>, timeout_ms: i64) -> PyResult<TransferState> {
        let h = self.handle.clone();
        let s = py.allow_threads(|| h.wait(timeout_ms)).or_raise(py)?;
        Ok(match s {
            0 => TransferState::IN_PROGRESS,
            1 => TransferState::SUCCESS,
            _ => TransferState::FAILURE,
        })
    }

    fn get_last_status_str(&self, py: Python<'_>) -> PyResult<String> {
        self.handle.last_status().or_raise(py)
    }

    /// Free the transport resources of a finished transfer; False while in flight.
    fn release(&self, py: Python<'_>) -> PyResult<bool> {
        self.handle.release().or_raise(py)
    }
}

#[pyclass(module = "tensorrt_llm_transfer_agent_binding", extends = TransferStatus)]
pub struct NixlTransferStatus;

#[pyclass(module = "tensorrt_llm_transfer_agent_binding", get_all, set_all)]
#[derive(Clone)]
pub struct BaseAgentConfig {
    name: String,
    use_prog_thread: bool,
    multi_thread: bool,
    use_listen_thread: bool,
    enable_telemetry: bool,
    backend_params: HashMap<String, String>,
    rank: Option<i64>,
    world_size: Option<i64>,
    agent_buffer_size_mb: u64,
    bounce_params: HashMap<String, String>,
}

#[pymethods]
impl BaseAgentConfig {
    #[new]
    #[pyo3(signature = (name=String::new(), use_prog_thread=true, multi_thread=false, use_listen_thread=false,
                        enable_telemetry=false, backend_params=HashMap::new(), rank=None, world_size=None,
                        agent_buffer_size_mb=0, bounce_params=HashMap::new()))]
    #[allow(clippy::too_many_arguments)] // each is a keyword argument of TensorRT-LLM's BaseAgentConfig
    fn new(
        name: String,
        use_prog_thread: bool,
        multi_thread: bool,
        use_listen_thread: bool,
        enable_telemetry: bool,
        backend_params: HashMap<String, String>,
        rank: Option<i64>,
        world_size: Option<i64>,
        agent_buffer_size_mb: u64,
        bounce_params: HashMap<String, String>,
    ) -> Self {
        BaseAgentConfig {
            name,
            use_prog_thread,
            multi_thread,
            use_listen_thread,
            enable_telemetry,
            backend_params,
            rank,
            world_size,
            agent_buffer_size_mb,
            bounce_params,
        }
    }
}

/// TensorRT-LLM's backendParams as kvxfer's "key=value;key=value", with
/// `num_workers` taken out into its own field (as the C++ NIXL wrapper does).
fn backend_params(py: Python<'_>, params: &HashMap<String, String>) -> PyResult<(Option<String>, u32)> {
    let mut workers = 0;
    let mut entries = Vec::new();
    for (k, v) in params {
        if k == "num_workers" {
            workers =
                v.parse::<u32>().ok().filter(|n| (1..=1024).contains(n)).ok_or_else(|| {
                    invalid(py, format!("backend_params num_workers={v:?} is not a count of workers"))
                })?;
            continue;
        }
        if k.is_empty() || k.contains([';', '=']) || v.contains(';') {
            return Err(invalid(
                py,
                format!("backend_params entry {k:?}={v:?} cannot be passed on (';' and '=' separate entries)"),
            ));
        }
        entries.push(format!("{k}={v}"));
    }
    entries.sort();
    Ok(((!entries.is_empty()).then(|| entries.join(";")), workers))
}

#[pyclass(module = "tensorrt_llm_transfer_agent_binding", subclass)]
pub struct BaseTransferAgent {
    handle: Arc<AgentHandle>,
}

impl BaseTransferAgent {
    fn create(py: Python<'_>, config: &BaseAgentConfig) -> PyResult<Self> {
        let (params, num_workers) = backend_params(py, &config.backend_params)?;
        let settings = AgentSettings {
            name: config.name.clone(),
            backend: KVX_BACKEND_AUTO,
            use_listen_thread: config.use_listen_thread,
            listen_ip: None,
            listen_port: 0,
            timeout_ms: 0,
            progress_thread: if config.use_prog_thread { 0 } else { 2 },
            num_workers,
            backend_params: params,
        };
        let h = py.allow_threads(|| AgentHandle::create(&settings)).or_raise(py)?;
        Ok(BaseTransferAgent { handle: Arc::new(h) })
    }

    fn descs(py: Python<'_>, d: &Bound<'_, PyAny>) -> PyResult<(u32, Vec<kvx_memory_desc>)> {
        if let Ok(d) = d.downcast::<MemoryDescs>() {
            let d = d.get();
            return Ok((d.mem_type.kvx(py)?, d.descs.clone()));
        }
        let (descs, _) = parse_descs(d)?;
        Ok((KVX_MEMORY_DRAM, descs))
    }
}

#[pymethods]
impl BaseTransferAgent {
    fn register_memory(&self, py: Python<'_>, descs: &Bound<'_, PyAny>) -> PyResult<()> {
        let (t, d) = Self::descs(py, descs)?;
        let h = self.handle.clone();
        py.allow_threads(|| h.register(t, &d)).or_raise(py)
    }

    fn deregister_memory(&self, py: Python<'_>, descs: &Bound<'_, PyAny>) -> PyResult<()> {
        let (t, d) = Self::descs(py, descs)?;
        let h = self.handle.clone();
        py.allow_threads(|| h.deregister(t, &d)).or_raise(py)
    }

    fn load_remote_agent(&self, py: Python<'_>, name: String, agent_desc: PyRef<'_, AgentDesc>) -> PyResult<()> {
        let desc = agent_desc.desc.clone();
        let h = self.handle.clone();
        py.allow_threads(|| h.load_remote(&name, &desc)).or_raise(py)
    }

    fn load_remote_agent_by_connection(&self, py: Python<'_>, name: String, connection_info: String) -> PyResult<()> {
        let h = self.handle.clone();
        py.allow_threads(|| h.load_remote_by_connection(&name, &connection_info, -1)).or_raise(py)
    }

    fn get_local_agent_desc(&self, py: Python<'_>) -> PyResult<AgentDesc> {
        let h = self.handle.clone();
        Ok(AgentDesc { desc: py.allow_threads(|| h.local_desc()).or_raise(py)? })
    }

    fn get_local_connection_info(&self, py: Python<'_>) -> PyResult<String> {
        let h = self.handle.clone();
        py.allow_threads(|| h.connection_info()).or_raise(py)
    }

    /// Forget a peer; unknown peers are ignored (TensorRT-LLM invalidates before loading).
    fn invalidate_remote_agent(&self, py: Python<'_>, name: String) -> PyResult<()> {
        let h = self.handle.clone();
        match py.allow_threads(|| h.invalidate(&name)) {
            Err(e) if e.code == KVX_ERR_NOT_FOUND => Ok(()),
            r => r.or_raise(py),
        }
    }

    fn submit_transfer_requests(
        &self,
        py: Python<'_>,
        request: PyRef<'_, TransferRequest>,
    ) -> PyResult<Py<NixlTransferStatus>> {
        let src = request.src_descs.bind(py).get();
        let dst = request.dst_descs.bind(py).get();
        let (st, dt) = (src.mem_type.kvx(py)?, dst.mem_type.kvx(py)?);
        let msg = request.sync_message.as_ref().map(|m| message_bytes(m.bind(py))).transpose()?;
        let op = request.op as u32;
        let (s, d, remote) = (src.descs.clone(), dst.descs.clone(), request.remote_name.clone());
        let h = self.handle.clone();
        let x = py.allow_threads(|| h.submit(op, st, &s, dt, &d, &remote, msg.as_deref())).or_raise(py)?;
        let init = PyClassInitializer::from(TransferStatus { handle: Arc::new(x) }).add_subclass(NixlTransferStatus);
        Py::new(py, init)
    }

    fn notify_sync_message(&self, py: Python<'_>, name: String, sync_message: &Bound<'_, PyAny>) -> PyResult<()> {
        let msg = message_bytes(sync_message)?;
        let h = self.handle.clone();
        py.allow_threads(|| h.notify(&name, &msg)).or_raise(py)
    }

    /// `{sender: [message, ...]}`; messages are str when they are UTF-8, else bytes.
    fn get_notified_sync_messages<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let h = self.handle.clone();
        let list = py.allow_threads(|| h.notifications()).or_raise(py)?;
        let out = PyDict::new(py);
        for n in list {
            let msg: PyObject = match String::from_utf8(n.message) {
                Ok(s) => s.into_pyobject(py)?.into_any().unbind(),
                Err(e) => PyBytes::new(py, e.as_bytes()).into_any().unbind(),
            };
            match out.get_item(&n.sender)? {
                Some(l) => l.call_method1("append", (msg,))?,
                None => {
                    out.set_item(&n.sender, vec![msg])?;
                    continue;
                }
            };
        }
        Ok(out)
    }

    fn check_remote_descs(&self, py: Python<'_>, name: String, memory_descs: PyRef<'_, MemoryDescs>) -> PyResult<bool> {
        let t = memory_descs.mem_type.kvx(py)?;
        let d = memory_descs.descs.clone();
        let h = self.handle.clone();
        py.allow_threads(|| h.check_remote_descs(&name, t, &d)).or_raise(py)
    }

    fn shutdown(&self, py: Python<'_>) {
        let h = self.handle.clone();
        py.allow_threads(|| h.close())
    }

    #[getter]
    fn bounce_enabled(&self) -> bool {
        false
    }

    #[getter]
    fn bounce_submit_count(&self) -> u64 {
        0
    }
}

#[pyclass(module = "tensorrt_llm_transfer_agent_binding", extends = BaseTransferAgent)]
pub struct NixlTransferAgent;

#[pymethods]
impl NixlTransferAgent {
    #[new]
    fn new(py: Python<'_>, config: PyRef<'_, BaseAgentConfig>) -> PyResult<(Self, BaseTransferAgent)> {
        Ok((NixlTransferAgent, BaseTransferAgent::create(py, &config)?))
    }
}

/// `make_transfer_agent("nixl", config)`; kvxfer has no Mooncake transport.
#[pyfunction]
fn make_transfer_agent(
    py: Python<'_>,
    backend: &str,
    config: PyRef<'_, BaseAgentConfig>,
) -> PyResult<Py<NixlTransferAgent>> {
    match backend.to_ascii_lowercase().as_str() {
        "nixl" => {
            let base = BaseTransferAgent::create(py, &config)?;
            Py::new(py, PyClassInitializer::from(base).add_subclass(NixlTransferAgent))
        }
        other => {
            Err(invalid(py, format!("transfer agent backend {other:?} is not available (kvxfer serves \"nixl\")")))
        }
    }
}

pub fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<MemoryType>()?;
    m.add_class::<TransferOp>()?;
    m.add_class::<TransferState>()?;
    m.add_class::<MemoryDesc>()?;
    m.add_class::<MemoryDescs>()?;
    m.add_class::<AgentDesc>()?;
    m.add_class::<TransferRequest>()?;
    m.add_class::<TransferStatus>()?;
    m.add_class::<NixlTransferStatus>()?;
    m.add_class::<BaseAgentConfig>()?;
    m.add_class::<BaseTransferAgent>()?;
    m.add_class::<NixlTransferAgent>()?;
    m.add_function(wrap_pyfunction!(make_transfer_agent, m)?)?;
    m.add("NIXL_ENABLED", true)?;
    m.add("MOONCAKE_ENABLED", false)?;
    m.add("__kvxfer_version__", crate::handles::version())?;
    Ok(())
}
