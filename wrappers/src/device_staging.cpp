#include "device_staging.hpp"

#include <dlfcn.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace kvxfer_trtllm
{
namespace
{

// The few driver entry points staging needs (CUDA driver API, v2 ABI names).
struct Driver
{
    using Result = int;
    Result (*init)(unsigned) = nullptr;
    Result (*deviceGet)(int*, int) = nullptr;
    Result (*primaryCtxRetain)(void**, int) = nullptr;
    Result (*primaryCtxRelease)(int) = nullptr;
    Result (*ctxPush)(void*) = nullptr;
    Result (*ctxPop)(void**) = nullptr;
    Result (*memAllocHost)(void**, size_t) = nullptr;
    Result (*memFreeHost)(void*) = nullptr;
    Result (*memcpyDtoH)(void*, uint64_t, size_t) = nullptr;
    Result (*memcpyHtoD)(uint64_t, void const*, size_t) = nullptr;
    Result (*errorString)(Result, char const**) = nullptr;
    std::string missing; // why the driver cannot be used, empty when it can

    void check(Result rc, char const* what) const
    {
        if (rc == 0)
            return;
        char const* text = nullptr;
        if (errorString == nullptr || errorString(rc, &text) != 0 || text == nullptr)
            text = "unknown error";
        throw std::runtime_error(
            std::string("kvxfer: loopback ") + what + " failed: CUDA error " + std::to_string(rc) + " (" + text + ")");
    }
};

Driver const& driver()
{
    static Driver const loaded = []
    {
        Driver d;
        void* lib = ::dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
        if (lib == nullptr)
        {
            d.missing = std::string("the CUDA driver (libcuda.so.1) cannot be loaded: ") + ::dlerror();
            return d;
        }
        auto bind = [&](auto& fn, char const* name)
        {
            fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(::dlsym(lib, name));
            if (fn == nullptr && d.missing.empty())
                d.missing = std::string("the CUDA driver has no ") + name;
        };
        bind(d.init, "cuInit");
        bind(d.deviceGet, "cuDeviceGet");
        bind(d.primaryCtxRetain, "cuDevicePrimaryCtxRetain");
        bind(d.primaryCtxRelease, "cuDevicePrimaryCtxRelease_v2");
        bind(d.ctxPush, "cuCtxPushCurrent_v2");
        bind(d.ctxPop, "cuCtxPopCurrent_v2");
        bind(d.memAllocHost, "cuMemAllocHost_v2");
        bind(d.memFreeHost, "cuMemFreeHost");
        bind(d.memcpyDtoH, "cuMemcpyDtoH_v2");
        bind(d.memcpyHtoD, "cuMemcpyHtoD_v2");
        bind(d.errorString, "cuGetErrorString");
        if (d.missing.empty() && d.init(0) != 0)
            d.missing = "cuInit failed: no usable GPU";
        return d;
    }();
    return loaded;
}

// The device's primary context, current on this thread for the scope.
class DeviceScope
{
public:
    DeviceScope(Driver const& d, uint32_t device)
        : mDriver(d)
    {
        d.check(d.deviceGet(&mDevice, static_cast<int>(device)), "cuDeviceGet");
        void* context = nullptr;
        d.check(d.primaryCtxRetain(&context, mDevice), "cuDevicePrimaryCtxRetain");
        if (int rc = d.ctxPush(context); rc != 0)
        {
            d.primaryCtxRelease(mDevice);
            d.check(rc, "cuCtxPushCurrent");
        }
    }

    ~DeviceScope()
    {
        void* popped = nullptr;
        mDriver.ctxPop(&popped);
        mDriver.primaryCtxRelease(mDevice);
    }

    DeviceScope(DeviceScope const&) = delete;
    DeviceScope& operator=(DeviceScope const&) = delete;

private:
    Driver const& mDriver;
    int mDevice = 0;
};

class PinnedBuffer
{
public:
    PinnedBuffer(Driver const& d, size_t bytes)
        : mDriver(d)
    {
        d.check(d.memAllocHost(&mData, bytes), "cuMemAllocHost");
    }

    ~PinnedBuffer()
    {
        mDriver.memFreeHost(mData);
    }

    PinnedBuffer(PinnedBuffer const&) = delete;
    PinnedBuffer& operator=(PinnedBuffer const&) = delete;

    [[nodiscard]] char* data() const noexcept
    {
        return static_cast<char*>(mData);
    }

private:
    Driver const& mDriver;
    void* mData = nullptr;
};

void fileIo(int fd, char* buffer, size_t len, off_t offset, bool toFile)
{
    size_t done = 0;
    while (done < len)
    {
        ssize_t n = toFile ? ::pwrite(fd, buffer + done, len - done, offset + static_cast<off_t>(done))
                           : ::pread(fd, buffer + done, len - done, offset + static_cast<off_t>(done));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            throw std::runtime_error(
                std::string("kvxfer: loopback ") + (toFile ? "write" : "read") + " failed: " + std::strerror(errno));
        if (n == 0)
            throw std::runtime_error("kvxfer: loopback read hit the end of the file at offset "
                                     + std::to_string(offset + static_cast<off_t>(done)));
        done += static_cast<size_t>(n);
    }
}

} // namespace

void copyDeviceFile(int fd, uintptr_t deviceAddr, size_t len, uint32_t device, bool toFile)
{
    Driver const& d = driver();
    if (!d.missing.empty())
        throw std::runtime_error("kvxfer: loopback with device memory needs CUDA: " + d.missing);
    if (len == 0)
        return;
    DeviceScope scope(d, device);
    PinnedBuffer staging(d, std::min(len, kStagingChunkBytes));
    for (size_t offset = 0; offset < len; offset += kStagingChunkBytes)
    {
        size_t piece = std::min(kStagingChunkBytes, len - offset);
        if (toFile)
        {
            d.check(d.memcpyDtoH(staging.data(), deviceAddr + offset, piece), "cuMemcpyDtoH");
            fileIo(fd, staging.data(), piece, static_cast<off_t>(offset), true);
        }
        else
        {
            fileIo(fd, staging.data(), piece, static_cast<off_t>(offset), false);
            d.check(d.memcpyHtoD(deviceAddr + offset, staging.data(), piece), "cuMemcpyHtoD");
        }
    }
}

} // namespace kvxfer_trtllm
