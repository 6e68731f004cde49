//! Turning Python objects into kvxfer memory descriptors without importing
//! any array library: buffer protocol (bytearray, numpy, memoryview, mmap),
//! `__cuda_array_interface__`, DLPack capsules and raw `(ptr, len, device)`
//! tuples. A registered object is pinned (its buffer export held, or a
//! reference kept) until it is deregistered.

use crate::errors::invalid;
use crate::sys::{kvx_memory_desc, KVX_MEMORY_DRAM, KVX_MEMORY_VRAM};
use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyCapsule, PyDict, PyString, PyTuple};

/// Keeps registered memory alive and unmoved.
pub enum Pin {
    /// Raw addresses: the caller keeps the memory alive.
    Nothing,
    /// A held buffer export (also stops a bytearray from resizing).
    Buffer(Box<ffi::Py_buffer>),
    /// References to the owners (CUDA arrays, DLPack capsule and producer), held, never read.
    Objects(#[allow(dead_code)] Vec<PyObject>),
}

// SAFETY: the Py_buffer is only released with the GIL held (Drop below).
unsafe impl Send for Pin {}
unsafe impl Sync for Pin {}

impl Drop for Pin {
    fn drop(&mut self) {
        if let Pin::Buffer(view) = self {
            Python::with_gil(|_| {
                // SAFETY: the view was filled by a successful PyObject_GetBuffer and is released once.
                unsafe { ffi::PyBuffer_Release(&mut **view) }
            });
        }
    }
}

/// One piece of memory found in a Python object.
pub struct Found {
    pub mem_type: u32,
    pub desc: kvx_memory_desc,
    pub pin: Pin,
}

pub fn int_u64(item: &Bound<'_, PyAny>, what: &str) -> PyResult<u64> {
    if item.is_instance_of::<pyo3::types::PyBool>() || item.downcast::<pyo3::types::PyInt>().is_err() {
        if let Ok(index) = item.call_method0("__index__") {
            return int_u64(&index, what);
        }
        return Err(PyTypeError::new_err(format!(
            "{what} must be an int, not {}",
            item.get_type().name().map(|n| n.to_string()).unwrap_or_default()
        )));
    }
    item.extract::<u64>().map_err(|_| invalid(item.py(), format!("{what} must be between 0 and 2**64-1, got {item}")))
}

pub fn int_u32(item: &Bound<'_, PyAny>, what: &str) -> PyResult<u32> {
    let v = int_u64(item, what)?;
    u32::try_from(v).map_err(|_| invalid(item.py(), format!("{what} must be below 2**32, got {v}")))
}

/// `(addr, len)` or `(addr, len, device)`.
pub fn desc_from_tuple(t: &Bound<'_, PyTuple>) -> PyResult<kvx_memory_desc> {
    if t.len() != 2 && t.len() != 3 {
        return Err(PyTypeError::new_err(format!(
            "a memory tuple is (addr, len) or (addr, len, device), got {} items",
            t.len()
        )));
    }
    let addr = int_u64(&t.get_item(0)?, "addr")?;
    let len = int_u64(&t.get_item(1)?, "len")?;
    let device_id = if t.len() == 3 { int_u32(&t.get_item(2)?, "device")? } else { 0 };
    Ok(kvx_memory_desc { addr, len, device_id })
}

fn itemsize(typestr: &str) -> Option<u64> {
    typestr.get(2..)?.parse().ok()
}

/// Device ordinal of a CUDA array object: cupy's `.device.id`, torch's `.device.index`, else 0.
fn cuda_device(obj: &Bound<'_, PyAny>) -> u32 {
    obj.getattr("device")
        .ok()
        .and_then(|d| d.getattr("id").ok().or_else(|| d.getattr("index").ok()).and_then(|i| i.extract::<u32>().ok()))
        .unwrap_or(0)
}

fn from_cuda_array_interface(obj: &Bound<'_, PyAny>, cai: &Bound<'_, PyAny>) -> PyResult<Found> {
    let py = obj.py();
    let cai = cai.downcast::<PyDict>().map_err(|_| PyTypeError::new_err("__cuda_array_interface__ is not a dict"))?;
    let get = |k: &str| cai.get_item(k).ok().flatten();
    let data = get("data").ok_or_else(|| invalid(py, "__cuda_array_interface__ has no 'data'"))?;
    let data = data.downcast::<PyTuple>().map_err(|_| PyTypeError::new_err("'data' must be (ptr, read_only)"))?;
    let addr = int_u64(&data.get_item(0)?, "__cuda_array_interface__ data pointer")?;
    let shape: Vec<u64> =
        get("shape").ok_or_else(|| invalid(py, "__cuda_array_interface__ has no 'shape'"))?.extract()?;
    let typestr: String = get("typestr").ok_or_else(|| invalid(py, "no 'typestr'"))?.extract()?;
    let size = itemsize(&typestr).ok_or_else(|| invalid(py, format!("unknown typestr {typestr:?}")))?;
    if let Some(strides) = get("strides").filter(|s| !s.is_none()) {
        let strides: Vec<u64> = strides.extract()?;
        let mut expect = size;
        for (dim, stride) in shape.iter().zip(strides.iter()).rev() {
            if *dim > 1 && *stride != expect {
                return Err(invalid(py, "only C-contiguous CUDA arrays can be registered"));
            }
            expect *= dim;
        }
    }
    let len =
        shape.iter().try_fold(size, |acc, d| acc.checked_mul(*d)).ok_or_else(|| invalid(py, "array too large"))?;
    Ok(Found {
        mem_type: KVX_MEMORY_VRAM,
        desc: kvx_memory_desc { addr, len, device_id: cuda_device(obj) },
        pin: Pin::Objects(vec![obj.clone().unbind()]),
    })
}

#[repr(C)]
struct DlDevice {
    device_type: i32,
    device_id: i32,
}
#[repr(C)]
struct DlDataType {
    code: u8,
    bits: u8,
    lanes: u16,
}
#[repr(C)]
struct DlTensor {
    data: *mut u8,
    device: DlDevice,
    ndim: i32,
    dtype: DlDataType,
    shape: *const i64,
    strides: *const i64,
    byte_offset: u64,
}

const DL_CPU: i32 = 1;
const DL_CUDA: i32 = 2;
const DL_CUDA_HOST: i32 = 3;
const DL_CUDA_MANAGED: i32 = 13;

fn from_dlpack(obj: &Bound<'_, PyAny>) -> PyResult<Found> {
    let py = obj.py();
    let capsule = obj.call_method0("__dlpack__")?;
    let capsule =
        capsule.downcast::<PyCapsule>().map_err(|_| PyTypeError::new_err("__dlpack__ did not return a capsule"))?;
    let name = capsule.name()?.map(|n| n.to_bytes().to_vec()).unwrap_or_default();
    if name != b"dltensor" {
        return Err(invalid(py, format!("unsupported DLPack capsule {:?}", String::from_utf8_lossy(&name))));
    }
    // SAFETY: a "dltensor" capsule holds a DLManagedTensor, whose first member is the DLTensor; the
    // capsule (kept below) owns it, and we never consume it.
    let t = unsafe { &*(capsule.pointer() as *const DlTensor) };
    if t.ndim < 0 || (t.ndim > 0 && t.shape.is_null()) {
        return Err(invalid(py, "malformed DLPack tensor"));
    }
    // SAFETY: shape and strides have ndim entries (strides may be NULL: C-contiguous).
    let shape = unsafe { std::slice::from_raw_parts(t.shape, t.ndim as usize) };
    let bytes_per = (u64::from(t.dtype.bits) * u64::from(t.dtype.lanes)).div_ceil(8);
    if !t.strides.is_null() {
        // SAFETY: as above.
        let strides = unsafe { std::slice::from_raw_parts(t.strides, t.ndim as usize) };
        let mut expect = 1i64;
        for (dim, stride) in shape.iter().zip(strides).rev() {
            if *dim > 1 && *stride != expect {
                return Err(invalid(py, "only C-contiguous DLPack tensors can be registered"));
            }
            expect = expect.saturating_mul(*dim);
        }
    }
    let len = shape
        .iter()
        .try_fold(bytes_per, |acc, d| u64::try_from(*d).ok().and_then(|d| acc.checked_mul(d)))
        .ok_or_else(|| invalid(py, "malformed DLPack shape"))?;
    let mem_type = match t.device.device_type {
        DL_CPU | DL_CUDA_HOST => KVX_MEMORY_DRAM,
        DL_CUDA | DL_CUDA_MANAGED => KVX_MEMORY_VRAM,
        other => return Err(invalid(py, format!("DLPack device type {other} is neither host nor CUDA memory"))),
    };
    Ok(Found {
        mem_type,
        desc: kvx_memory_desc {
            addr: (t.data as u64).wrapping_add(t.byte_offset),
            len,
            device_id: u32::try_from(t.device.device_id).unwrap_or(0),
        },
        pin: Pin::Objects(vec![obj.clone().unbind(), capsule.clone().into_any().unbind()]),
    })
}

fn from_buffer(obj: &Bound<'_, PyAny>) -> PyResult<Found> {
    let py = obj.py();
    let mut view: Box<ffi::Py_buffer> = Box::new(unsafe { std::mem::zeroed() });
    // SAFETY: `view` is writable storage for a Py_buffer; on success it is released by Pin's Drop.
    let rc =
        unsafe { ffi::PyObject_GetBuffer(obj.as_ptr(), &mut *view, ffi::PyBUF_WRITABLE | ffi::PyBUF_ANY_CONTIGUOUS) };
    if rc != 0 {
        let cause = PyErr::take(py);
        let msg = cause.map(|e| e.to_string()).unwrap_or_default();
        return Err(invalid(
            py,
            format!("only writable, contiguous buffers can be registered (bytes are read-only: use bytearray): {msg}"),
        ));
    }
    let desc = kvx_memory_desc { addr: view.buf as u64, len: view.len as u64, device_id: 0 };
    Ok(Found { mem_type: KVX_MEMORY_DRAM, desc, pin: Pin::Buffer(view) })
}

/// Find the memory of `obj`; `mem_type` / `device` override what the object says.
pub fn find_memory(obj: &Bound<'_, PyAny>, mem_type: Option<u32>, device: Option<u32>) -> PyResult<Found> {
    let mut found = if let Ok(t) = obj.downcast::<PyTuple>() {
        Found { mem_type: KVX_MEMORY_DRAM, desc: desc_from_tuple(t)?, pin: Pin::Nothing }
    } else if let Ok(region) = obj.extract::<crate::api::Region>() {
        Found { mem_type: region.mem_type, desc: region.desc(), pin: Pin::Nothing }
    } else if let Ok(cai) = obj.getattr("__cuda_array_interface__") {
        from_cuda_array_interface(obj, &cai)?
    } else if unsafe { ffi::PyObject_CheckBuffer(obj.as_ptr()) } != 0 {
        from_buffer(obj)?
    } else if obj.hasattr("__dlpack__")? {
        from_dlpack(obj)?
    } else {
        return Err(PyTypeError::new_err(format!(
            "cannot register a {}: pass a writable buffer (bytearray, numpy array, memoryview), an object with \
             __cuda_array_interface__ or __dlpack__, or an (addr, len, device) tuple",
            obj.get_type().name().map(|n| n.to_string()).unwrap_or_default()
        )));
    };
    if let Some(t) = mem_type {
        found.mem_type = t;
    }
    if let Some(d) = device {
        found.desc.device_id = d;
    }
    Ok(found)
}

/// The bytes of a message argument: bytes, bytearray, str (UTF-8) or any buffer.
pub fn message_bytes(obj: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    if let Ok(b) = obj.downcast::<PyBytes>() {
        return Ok(b.as_bytes().to_vec());
    }
    if let Ok(b) = obj.downcast::<PyByteArray>() {
        return Ok(b.to_vec());
    }
    if let Ok(s) = obj.downcast::<PyString>() {
        return Ok(s.to_str()?.as_bytes().to_vec());
    }
    if unsafe { ffi::PyObject_CheckBuffer(obj.as_ptr()) } != 0 {
        let buf = pyo3::buffer::PyBuffer::<u8>::get(obj)?;
        return buf.to_vec(obj.py());
    }
    Err(PyTypeError::new_err(format!(
        "a message must be bytes, bytearray, str or a buffer, not {}",
        obj.get_type().name().map(|n| n.to_string()).unwrap_or_default()
    )))
}

/// A buffer export held for the duration of one blocking call.
pub struct HeldBuffer {
    view: Box<ffi::Py_buffer>,
}

// SAFETY: only the pointer and length are read without the GIL; release takes the GIL.
unsafe impl Send for HeldBuffer {}

impl HeldBuffer {
    pub fn get(obj: &Bound<'_, PyAny>, writable: bool) -> PyResult<Self> {
        let mut view: Box<ffi::Py_buffer> = Box::new(unsafe { std::mem::zeroed() });
        let flags = ffi::PyBUF_ANY_CONTIGUOUS | if writable { ffi::PyBUF_WRITABLE } else { 0 };
        // SAFETY: writable storage for a Py_buffer; released in Drop.
        if unsafe { ffi::PyObject_GetBuffer(obj.as_ptr(), &mut *view, flags) } != 0 {
            return Err(PyErr::take(obj.py()).unwrap_or_else(|| PyTypeError::new_err("not a buffer")));
        }
        Ok(HeldBuffer { view })
    }
    pub fn ptr(&self) -> *mut u8 {
        self.view.buf.cast()
    }
    pub fn len(&self) -> usize {
        self.view.len as usize
    }
}

impl Drop for HeldBuffer {
    fn drop(&mut self) {
        Python::with_gil(|_| {
            // SAFETY: filled by a successful PyObject_GetBuffer, released once.
            unsafe { ffi::PyBuffer_Release(&mut *self.view) }
        });
    }
}
