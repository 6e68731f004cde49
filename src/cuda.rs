//! CUDA through cudarc with dynamic loading: where no driver is installed
//! every query answers "host memory", so kvxfer builds and runs without a GPU.

use crate::core::memory::kvx_memory_type;
use cudarc::driver::sys;
use once_cell::sync::Lazy;

/// Whether a CUDA driver is present and initialised (checked once; cudarc
/// panics on first use when the driver library is missing).
static DRIVER: Lazy<bool> = Lazy::new(|| {
    // SAFETY: probing for the library and calling cuInit are side-effect free otherwise.
    unsafe { sys::is_culib_present() && sys::cuInit(0) == sys::CUresult::CUDA_SUCCESS }
});

pub fn driver_available() -> bool {
    *DRIVER
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

#[cfg(test)]
mod tests {
    #[test]
    fn host_pointers_are_dram_with_or_without_cuda() {
        let v = vec![0u8; 64];
        assert_eq!(super::pointer_location(v.as_ptr() as u64).0, crate::core::memory::kvx_memory_type::KVX_MEMORY_DRAM);
    }
}
