// Device memory to and from files for the loopback agent: kvxfer has no
// GPUDirect Storage path, so bytes go through one pinned host buffer in
// bounded chunks (cudaMemcpy-class copies, then pread/pwrite). The CUDA driver
// is loaded at run time, so the wrapper builds and loads without CUDA.
#pragma once

#include <cstddef>
#include <cstdint>

namespace [[gnu::visibility("hidden")]] kvxfer_trtllm
{

// Largest piece staged at once: the pinned buffer's size.
constexpr size_t kStagingChunkBytes = 8u << 20;

// Copies `len` bytes between device memory at `deviceAddr` on GPU `device` and
// file `fd` from offset 0. Throws std::runtime_error, naming the CUDA or file
// call, when the driver is missing or any step fails.
void copyDeviceFile(int fd, uintptr_t deviceAddr, size_t len, uint32_t device, bool toFile);

} // namespace kvxfer_trtllm
