//! Device allocations for tests, tools and benchmarks: `cudaMalloc`-style
//! (`cuMemAlloc`) and VMM (`cuMemCreate` + `cuMemAddressReserve` + `cuMemMap`
//! + `cuMemSetAccess`), with host copies to fill and check them.

use super::{check, ContextScope};
use crate::core::error::Result;
use cudarc::driver::sys;

/// How a device buffer was allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocation {
    /// `cuMemAlloc` (what `cudaMalloc` does): CUDA IPC handles can be exported.
    Plain,
    /// Virtual memory management API: physical memory mapped into a reserved
    /// range; no legacy IPC handle exists for it.
    Vmm,
}

/// Device memory owned by this process, freed on drop.
pub struct DeviceBuffer {
    ptr: u64,
    len: usize,
    device: u32,
    kind: Allocation,
    /// VMM only: mapped size (rounded up to the granularity) and the physical handle.
    vmm: Option<(usize, sys::CUmemGenericAllocationHandle)>,
}

unsafe impl Send for DeviceBuffer {}
unsafe impl Sync for DeviceBuffer {}

impl DeviceBuffer {
    pub fn new(device: u32, len: usize, kind: Allocation) -> Result<DeviceBuffer> {
        let _scope = ContextScope::enter(device)?;
        match kind {
            Allocation::Plain => {
                let mut ptr = 0;
                // SAFETY: out-parameter.
                check(
                    unsafe { sys::cuMemAlloc_v2(&mut ptr, len.max(1)) },
                    &format!("cuMemAlloc of {len} bytes on device {device}"),
                )?;
                Ok(DeviceBuffer { ptr, len, device, kind, vmm: None })
            }
            Allocation::Vmm => Self::new_vmm(device, len),
        }
    }

    fn new_vmm(device: u32, len: usize) -> Result<DeviceBuffer> {
        // SAFETY: plain-data struct, zero is a valid starting value for every field.
        let mut prop: sys::CUmemAllocationProp = unsafe { std::mem::zeroed() };
        prop.type_ = sys::CUmemAllocationType::CU_MEM_ALLOCATION_TYPE_PINNED;
        prop.location.type_ = sys::CUmemLocationType::CU_MEM_LOCATION_TYPE_DEVICE;
        prop.location.id = device as i32;
        // Exportable as a file descriptor, as frameworks' VMM pools allocate it.
        prop.requestedHandleTypes = sys::CUmemAllocationHandleType::CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
        let mut granularity = 0usize;
        // SAFETY: out-parameter and a filled property struct.
        check(
            unsafe {
                sys::cuMemGetAllocationGranularity(
                    &mut granularity,
                    &prop,
                    sys::CUmemAllocationGranularity_flags::CU_MEM_ALLOC_GRANULARITY_MINIMUM,
                )
            },
            "VMM granularity",
        )?;
        let size = len.max(1).div_ceil(granularity) * granularity;
        let mut handle: sys::CUmemGenericAllocationHandle = 0;
        let mut ptr = 0;
        // SAFETY: each step's outputs feed the next; failures undo what was done.
        unsafe {
            check(
                sys::cuMemCreate(&mut handle, size, &prop, 0),
                &format!("cuMemCreate of {size} bytes on device {device}"),
            )?;
            if let Err(e) = check(sys::cuMemAddressReserve(&mut ptr, size, 0, 0, 0), "cuMemAddressReserve") {
                sys::cuMemRelease(handle);
                return Err(e);
            }
            let mut access: sys::CUmemAccessDesc = std::mem::zeroed();
            access.location = prop.location;
            access.flags = sys::CUmemAccess_flags::CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
            let mapped = check(sys::cuMemMap(ptr, size, 0, handle, 0), "cuMemMap")
                .and_then(|_| check(sys::cuMemSetAccess(ptr, size, &access, 1), "cuMemSetAccess"));
            if let Err(e) = mapped {
                sys::cuMemUnmap(ptr, size);
                sys::cuMemAddressFree(ptr, size);
                sys::cuMemRelease(handle);
                return Err(e);
            }
        }
        Ok(DeviceBuffer { ptr, len, device, kind: Allocation::Vmm, vmm: Some((size, handle)) })
    }

    pub fn ptr(&self) -> u64 {
        self.ptr
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn device(&self) -> u32 {
        self.device
    }
    pub fn kind(&self) -> Allocation {
        self.kind
    }

    pub fn upload(&self, offset: usize, bytes: &[u8]) -> Result<()> {
        assert!(offset + bytes.len() <= self.len, "upload outside the buffer");
        let _scope = ContextScope::enter(self.device)?;
        // SAFETY: in bounds (asserted).
        check(
            unsafe { sys::cuMemcpyHtoD_v2(self.ptr + offset as u64, bytes.as_ptr() as *const _, bytes.len()) },
            "copy to device",
        )
    }

    pub fn download(&self, offset: usize, len: usize) -> Result<Vec<u8>> {
        assert!(offset + len <= self.len, "download outside the buffer");
        let _scope = ContextScope::enter(self.device)?;
        let mut out = vec![0u8; len];
        // SAFETY: in bounds (asserted).
        check(
            unsafe { sys::cuMemcpyDtoH_v2(out.as_mut_ptr() as *mut _, self.ptr + offset as u64, len) },
            "copy to host",
        )?;
        Ok(out)
    }

    pub fn fill(&self, byte: u8) -> Result<()> {
        let _scope = ContextScope::enter(self.device)?;
        // SAFETY: the whole buffer.
        check(unsafe { sys::cuMemsetD8_v2(self.ptr, byte, self.len) }, "memset")?;
        check(unsafe { sys::cuCtxSynchronize() }, "memset sync")
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        let Ok(_scope) = ContextScope::enter(self.device) else { return };
        // SAFETY: allocated above; callers stop using the buffer before dropping it.
        unsafe {
            match self.vmm {
                None => {
                    sys::cuMemFree_v2(self.ptr);
                }
                Some((size, handle)) => {
                    sys::cuMemUnmap(self.ptr, size);
                    sys::cuMemAddressFree(self.ptr, size);
                    sys::cuMemRelease(handle);
                }
            }
        }
    }
}

/// Copy `len` bytes from `src` on device `src_device` to `dst` on device
/// `dst_device` with `cuMemcpyPeer` (the copy engines over NVLink or PCIe),
/// and wait for it: the ceiling any GPU-to-GPU transfer is measured against.
pub fn peer_copy(dst: u64, dst_device: u32, src: u64, src_device: u32, len: usize) -> Result<()> {
    let dst_ctx = super::primary_context(dst_device)?;
    let src_ctx = super::primary_context(src_device)?;
    let _scope = ContextScope::enter(src_device)?;
    // SAFETY: the caller vouches for both ranges.
    check(unsafe { sys::cuMemcpyPeer(dst, dst_ctx, src, src_ctx, len) }, "cuMemcpyPeer")?;
    check(unsafe { sys::cuCtxSynchronize() }, "peer copy sync")
}

/// Let device `a` and device `b` reach each other's memory directly (both
/// directions), as peer copies and peer-mapped kernels need for NVLink speed.
pub fn enable_peer_access(a: u32, b: u32) -> Result<()> {
    if a == b {
        return Ok(());
    }
    for (from, to) in [(a, b), (b, a)] {
        let peer = super::primary_context(to)?;
        let _scope = ContextScope::enter(from)?;
        // SAFETY: retained contexts.
        match unsafe { sys::cuCtxEnablePeerAccess(peer, 0) } {
            sys::CUresult::CUDA_SUCCESS | sys::CUresult::CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED => {}
            st => check(st, &format!("enabling peer access from device {from} to {to}"))?,
        }
    }
    Ok(())
}
