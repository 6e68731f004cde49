//! CUDA through cudarc with dynamic loading: where no driver is installed
//! every query answers "host memory", so kvxfer builds and runs without a GPU.
//!
//! `memory`: device allocations (plain and VMM) and copies for tests and tools;
//! `ipc`: CUDA IPC handles of registered regions and their mappings in a peer;
//! `batch`: one kernel launch that copies a whole list of (src, dst, len).

pub mod batch;
pub mod ipc;
pub mod memory;

use crate::core::error::{kvx_status, Error, Result};
use crate::core::memory::kvx_memory_type;
use cudarc::driver::sys;
use once_cell::sync::Lazy;

/// Whether a CUDA driver is present and initialised (checked once; cudarc
/// panics on first use when the driver library is missing).
static DRIVER: Lazy<bool> = Lazy::new(|| {
    // Miri cannot dlopen: under it the host-memory paths run, as on a machine without CUDA.
    if cfg!(miri) {
        return false;
    }
    // SAFETY: probing for the library and calling cuInit are side-effect free otherwise.
    unsafe { sys::is_culib_present() && sys::cuInit(0) == sys::CUresult::CUDA_SUCCESS }
});

pub fn driver_available() -> bool {
    *DRIVER
}

/// Number of visible CUDA devices (0 without a driver).
pub fn device_count() -> usize {
    if !driver_available() {
        return 0;
    }
    let mut n = 0i32;
    // SAFETY: out-parameter.
    let st = unsafe { sys::cuDeviceGetCount(&mut n) };
    if st == sys::CUresult::CUDA_SUCCESS {
        n.max(0) as usize
    } else {
        0
    }
}

/// A CUDA status as a kvxfer error naming the call.
pub(crate) fn check(st: sys::CUresult, what: &str) -> Result<()> {
    if st == sys::CUresult::CUDA_SUCCESS {
        Ok(())
    } else {
        Err(Error::new(kvx_status::KVX_ERR_TRANSPORT, format!("{what}: CUDA error {st:?}")))
    }
}

fn require_driver() -> Result<()> {
    if driver_available() {
        Ok(())
    } else {
        Err(Error::new(kvx_status::KVX_ERR_UNSUPPORTED, "no CUDA driver or GPU on this machine"))
    }
}

/// The primary context of device `ordinal`, retained once per device for the
/// life of the process (kvxfer never releases it: UCX and NIXL use it too).
pub fn primary_context(ordinal: u32) -> Result<sys::CUcontext> {
    static CONTEXTS: Lazy<parking_lot::Mutex<Vec<(u32, usize)>>> = Lazy::new(Default::default);
    require_driver()?;
    let mut known = CONTEXTS.lock();
    if let Some(&(_, ctx)) = known.iter().find(|(o, _)| *o == ordinal) {
        return Ok(ctx as sys::CUcontext);
    }
    let mut dev: sys::CUdevice = 0;
    let mut ctx: sys::CUcontext = std::ptr::null_mut();
    // SAFETY: out-parameters; the ordinal is checked by the driver.
    unsafe {
        check(sys::cuDeviceGet(&mut dev, ordinal as i32), &format!("device {ordinal}"))?;
        check(sys::cuDevicePrimaryCtxRetain(&mut ctx, dev), &format!("primary context of device {ordinal}"))?;
    }
    known.push((ordinal, ctx as usize));
    Ok(ctx)
}

/// Make device `ordinal`'s primary context current on the calling thread
/// (what `cudaSetDevice` does); for processes bound to one GPU.
pub fn bind_thread_to_device(ordinal: u32) -> Result<()> {
    let ctx = primary_context(ordinal)?;
    // SAFETY: a retained context.
    check(unsafe { sys::cuCtxSetCurrent(ctx) }, "setting the current context")
}

/// Runs work with a device's primary context current and restores the
/// caller's context afterwards, so kvxfer never changes what the
/// application's threads have current.
pub(crate) struct ContextScope(());

impl ContextScope {
    pub fn enter(ordinal: u32) -> Result<ContextScope> {
        let ctx = primary_context(ordinal)?;
        // SAFETY: a retained context; popped in Drop.
        check(unsafe { sys::cuCtxPushCurrent_v2(ctx) }, "pushing a context")?;
        Ok(ContextScope(()))
    }
}

impl Drop for ContextScope {
    fn drop(&mut self) {
        let mut old: sys::CUcontext = std::ptr::null_mut();
        // SAFETY: pairs with the push in `enter` on this thread.
        unsafe { sys::cuCtxPopCurrent_v2(&mut old) };
    }
}

/// `pointer_location` where a driver can tell, `None` without one (core's
/// `PointerLocator`, given to the registrations of every backend).
pub fn locate_pointer(addr: u64) -> Option<(kvx_memory_type, u32)> {
    driver_available().then(|| pointer_location(addr))
}

/// Memory type and device ordinal of `addr`, from the CUDA driver; host
/// memory when CUDA is absent or the pointer is unknown to it.
pub fn pointer_location(addr: u64) -> (kvx_memory_type, u32) {
    if !driver_available() || addr == 0 {
        return (kvx_memory_type::KVX_MEMORY_DRAM, 0);
    }
    let mut mem_type: u32 = 0;
    let mut ordinal: i32 = 0;
    // SAFETY: out-parameters of the sizes the driver writes for these attributes.
    unsafe {
        let st = sys::cuPointerGetAttribute(
            &mut mem_type as *mut u32 as *mut std::ffi::c_void,
            sys::CUpointer_attribute::CU_POINTER_ATTRIBUTE_MEMORY_TYPE,
            addr as sys::CUdeviceptr,
        );
        if st != sys::CUresult::CUDA_SUCCESS || mem_type != sys::CUmemorytype::CU_MEMORYTYPE_DEVICE as u32 {
            return (kvx_memory_type::KVX_MEMORY_DRAM, 0);
        }
        sys::cuPointerGetAttribute(
            &mut ordinal as *mut i32 as *mut std::ffi::c_void,
            sys::CUpointer_attribute::CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL,
            addr as sys::CUdeviceptr,
        );
    }
    (kvx_memory_type::KVX_MEMORY_VRAM, ordinal.max(0) as u32)
}

/// Bytes at `addr`, which may be host or device memory (device memory is
/// copied to the host); for paths that must look at message bytes.
pub fn read_bytes(addr: u64, len: usize) -> Result<Vec<u8>> {
    match pointer_location(addr) {
        (kvx_memory_type::KVX_MEMORY_VRAM, device) => {
            let _scope = ContextScope::enter(device)?;
            let mut out = vec![0u8; len];
            // SAFETY: the caller vouches for `len` device bytes at `addr`.
            check(
                unsafe { sys::cuMemcpyDtoH_v2(out.as_mut_ptr() as *mut _, addr, len) },
                "copying device bytes to the host",
            )?;
            Ok(out)
        }
        // SAFETY: the caller vouches for `len` host bytes at `addr`.
        _ => Ok(unsafe { std::slice::from_raw_parts(addr as *const u8, len) }.to_vec()),
    }
}

/// Write `bytes` to `addr`, host or device memory.
pub fn write_bytes(addr: u64, bytes: &[u8]) -> Result<()> {
    match pointer_location(addr) {
        (kvx_memory_type::KVX_MEMORY_VRAM, device) => {
            let _scope = ContextScope::enter(device)?;
            // SAFETY: the caller vouches for `bytes.len()` device bytes at `addr`.
            check(
                unsafe { sys::cuMemcpyHtoD_v2(addr, bytes.as_ptr() as *const _, bytes.len()) },
                "copying bytes to the device",
            )
        }
        _ => {
            // SAFETY: the caller vouches for writable host bytes at `addr`.
            unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), addr as *mut u8, bytes.len()) };
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn host_pointers_are_dram_with_or_without_cuda() {
        let v = [0u8; 64];
        assert_eq!(super::pointer_location(v.as_ptr() as u64).0, crate::core::memory::kvx_memory_type::KVX_MEMORY_DRAM);
    }

    #[test]
    fn host_bytes_round_trip_without_cuda() {
        let mut v = vec![0u8; 16];
        super::write_bytes(v.as_mut_ptr() as u64, &[7u8; 16]).unwrap();
        assert_eq!(super::read_bytes(v.as_ptr() as u64, 16).unwrap(), vec![7u8; 16]);
    }
}
