// Loading TensorRT-LLM's transport plug-ins the way TensorRT-LLM does
// (dlopen by bare file name with RTLD_LAZY, dlsym of the C factory), plus
// small utilities for host and device buffers. The suite never links kvxfer:
// it sees only the wrapper libraries, through TensorRT-LLM's interfaces.
#pragma once

#include "tensorrt_llm/executor/cacheCommunicator.h"
#include "tensorrt_llm/executor/dataTransceiverState.h"
#include "tensorrt_llm/executor/transferAgent.h"

#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <dlfcn.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

namespace trtllm_test
{

namespace kvc = tensorrt_llm::executor::kv_cache;

constexpr char const* kUcxWrapper = "libtensorrt_llm_ucx_wrapper.so";
constexpr char const* kNixlWrapper = "libtensorrt_llm_nixl_wrapper.so";

using MakeUcxConnectionManager = std::unique_ptr<kvc::ConnectionManager> (*)();
using CreateTransferAgent = std::unique_ptr<kvc::BaseTransferAgent> (*)(kvc::BaseAgentConfig const*);
using CreateLoopbackAgent = std::shared_ptr<kvc::BaseLoopbackAgent> (*)(kvc::BaseAgentConfig const*);

// dlopen(name, RTLD_LAZY) + dlsym, like TensorRT-LLM's CacheTransceiver and
// DynLibLoader; the handle is kept for the process's life, as theirs is.
inline void* wrapperSymbol(char const* library, char const* symbol)
{
    static std::mutex mutex;
    std::lock_guard<std::mutex> lock(mutex);
    void* handle = ::dlopen(library, RTLD_LAZY);
    if (handle == nullptr)
        throw std::runtime_error(std::string(library) + " is not open correctly: " + ::dlerror());
    void* fn = ::dlsym(handle, symbol);
    if (fn == nullptr)
        throw std::runtime_error(std::string("Unable to load ") + library + " symbol " + symbol);
    return fn;
}

inline std::unique_ptr<kvc::ConnectionManager> makeUcxConnectionManager()
{
    return reinterpret_cast<MakeUcxConnectionManager>(wrapperSymbol(kUcxWrapper, "makeUcxConnectionManager"))();
}

// ---- one suite for every release line (kvxferLine.h): the calls whose form differs

// TensorRT-LLM's agent config: progress thread on; `listen` starts the
// listener (before 1.3 the config has no such switch and it always runs).
inline kvc::BaseAgentConfig agentConfig(
    std::string const& name, bool listen, std::unordered_map<std::string, std::string> backendParams = {})
{
#if KVXFER_TRTLLM_LINE >= 104
    return kvc::BaseAgentConfig{
        name, true, false, listen, false, std::move(backendParams), std::nullopt, std::nullopt, 0, {}};
#elif KVXFER_TRTLLM_LINE >= 103
    return kvc::BaseAgentConfig{name, true, false, listen, false, std::move(backendParams), std::nullopt, std::nullopt};
#else
    (void)listen;
    (void)backendParams;
    return kvc::BaseAgentConfig{name, true, false};
#endif
}

#if KVXFER_TRTLLM_LINE >= 103
using TransferState = kvc::TransferState;
#else
// Before 1.3 wait() returns nothing and throws on failure; the suite speaks in 1.3's states.
enum class TransferState
{
    kIN_PROGRESS,
    kSUCCESS,
    kFAILURE,
};

// What the last failed wait() of this thread said (waitFor keeps it).
inline std::string& lastWaitError()
{
    thread_local std::string text;
    return text;
}
#endif

// wait(timeoutMs) from 1.3 on; before, wait() until the end (there is no
// timeout to give: kvxfer's own transfer deadline bounds it).
inline TransferState waitFor(kvc::TransferStatus const& status, int64_t timeoutMs = -1)
{
#if KVXFER_TRTLLM_LINE >= 103
    return status.wait(timeoutMs);
#else
    (void)timeoutMs;
    try
    {
        status.wait();
        return TransferState::kSUCCESS;
    }
    catch (std::exception const& e)
    {
        lastWaitError() = e.what();
        return TransferState::kFAILURE;
    }
#endif
}

// Whether a failed transfer says why: getLastStatusStr() from 1.4 on, the
// exception of wait() before 1.3; 1.3 has neither.
constexpr bool kStatusExplainsFailure = KVXFER_TRTLLM_LINE >= 104 || KVXFER_TRTLLM_LINE < 103;

// What the line lets a transfer say about itself (see kStatusExplainsFailure).
inline std::string statusText(kvc::TransferStatus const& status)
{
#if KVXFER_TRTLLM_LINE >= 104
    return status.getLastStatusStr();
#elif KVXFER_TRTLLM_LINE < 103
    (void)status;
    return lastWaitError();
#else
    (void)status;
    return {};
#endif
}

// getLocalConnectionInfo() from 1.2 on, getConnectionInfo() before.
inline std::string localConnectionInfo(kvc::BaseTransferAgent& agent)
{
#if KVXFER_TRTLLM_LINE >= 102
    return agent.getLocalConnectionInfo();
#else
    return agent.getConnectionInfo();
#endif
}

// loadRemoteAgent(name, connectionInfo) from 1.2 on, connectRemoteAgent before.
inline void loadByConnectionInfo(kvc::BaseTransferAgent& agent, std::string const& name, std::string const& info)
{
#if KVXFER_TRTLLM_LINE >= 102
    agent.loadRemoteAgent(name, info);
#else
    agent.connectRemoteAgent(name, info);
#endif
}

// TensorRT-LLM's AgentConnectionManager config: progress thread on, listener on.
inline std::unique_ptr<kvc::BaseTransferAgent> makeTransferAgent(std::string const& name)
{
    auto config = agentConfig(name, true);
    return reinterpret_cast<CreateTransferAgent>(wrapperSymbol(kNixlWrapper, "createNixlTransferAgent"))(&config);
}

inline std::shared_ptr<kvc::BaseLoopbackAgent> makeLoopbackAgent(std::string const& name)
{
    auto config = agentConfig(name, false);
    return reinterpret_cast<CreateLoopbackAgent>(wrapperSymbol(kNixlWrapper, "createNixlLoopbackAgent"))(&config);
}

// Whether the run selected kvxfer's NIXL backend (as trtllm_main.cpp sets it, TensorRT-LLM's way).
inline bool nixlSelected()
{
    char const* nixl = std::getenv("TRTLLM_USE_NIXL_KVCACHE");
    char const* ucx = std::getenv("TRTLLM_USE_UCX_KVCACHE");
    return nixl != nullptr && std::string(nixl) == "1" && (ucx == nullptr || std::string(ucx) != "1");
}

// Bound for every wait in the suite: a broken transport fails, never hangs.
constexpr auto kWaitLimit = std::chrono::seconds(10);

// A TCP socket bound to 127.0.0.1 on a free port (listening when `backlog` > 0);
// returns the descriptor (-1 on failure) and sets `port`.
inline int loopbackSocket(uint16_t& port, int backlog)
{
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0
        || (backlog > 0 && ::listen(fd, backlog) != 0)
        || ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0)
    {
        if (fd >= 0)
            ::close(fd);
        return -1;
    }
    port = ntohs(addr.sin_port);
    return fd;
}

// Whether a TCP socket can bind 127.0.0.1:port just now.
inline bool portIsFree(uint16_t port)
{
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(port);
    bool free = fd >= 0 && ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
    if (fd >= 0)
        ::close(fd);
    return free;
}

// Marks the line a peer process announces itself with: transports may log to
// the same stdout (UCX prints its warnings there).
constexpr char const* kAnnounce = "KVX-PEER ";

// The text after kAnnounce on the first line of `fd` that starts with it ("" at end of input).
inline std::string readAnnouncement(int fd)
{
    std::string line;
    char ch = 0;
    while (::read(fd, &ch, 1) == 1)
    {
        if (ch != '\n')
        {
            line += ch;
            continue;
        }
        if (line.rfind(kAnnounce, 0) == 0)
            return line.substr(std::strlen(kAnnounce));
        line.clear();
    }
    return {};
}

// Sets (or, with nullptr, unsets) an environment variable for one scope.
class ScopedEnv
{
public:
    ScopedEnv(char const* name, char const* value)
        : mName(name)
    {
        char const* old = std::getenv(name);
        mHad = old != nullptr;
        if (mHad)
            mOld = old;
        if (value)
            ::setenv(name, value, 1);
        else
            ::unsetenv(name);
    }

    ~ScopedEnv()
    {
        if (mHad)
            ::setenv(mName.c_str(), mOld.c_str(), 1);
        else
            ::unsetenv(mName.c_str());
    }

    ScopedEnv(ScopedEnv const&) = delete;
    ScopedEnv& operator=(ScopedEnv const&) = delete;

private:
    std::string mName;
    std::string mOld;
    bool mHad = false;
};

// Runs `body` and aborts the whole program if it is not done within `limit`
// (TensorRT-LLM's newest connection tests use a 20 s watchdog the same way):
// a hang is reported as a failure, never waited out.
template <typename Body>
void withWatchdog(std::chrono::seconds limit, char const* what, Body&& body)
{
    std::mutex mutex;
    std::condition_variable cv;
    bool done = false;
    std::thread watchdog(
        [&]
        {
            std::unique_lock<std::mutex> lock(mutex);
            if (!cv.wait_for(lock, limit, [&] { return done; }))
            {
                std::fprintf(
                    stderr, "watchdog: %s did not finish within %lld s\n", what, static_cast<long long>(limit.count()));
                std::abort();
            }
        });
    auto finish = [&]
    {
        {
            std::lock_guard<std::mutex> lock(mutex);
            done = true;
        }
        cv.notify_all();
        watchdog.join();
    };
    try
    {
        body();
    }
    catch (...)
    {
        finish();
        throw;
    }
    finish();
}

inline std::vector<char> randomBytes(size_t n, uint32_t seed)
{
    std::mt19937 gen(seed);
    std::uniform_int_distribution<int> dist(0, 255);
    std::vector<char> v(n);
    for (auto& c : v)
        c = static_cast<char>(dist(gen));
    return v;
}

// Like randomBytes for large buffers: a 64-bit xorshift, 8 bytes a step, so
// tens of MiB take milliseconds even in an unoptimised build.
inline std::vector<char> bulkBytes(size_t n, uint64_t seed)
{
    std::vector<char> v(n);
    uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
    for (size_t i = 0; i < n; i += sizeof x)
    {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        std::memcpy(v.data() + i, &x, std::min(sizeof x, n - i));
    }
    return v;
}

// Agent names unique per process and test, so reruns never collide.
inline std::string uniqueName(std::string const& base)
{
    static std::atomic<int> counter{0};
    return base + "_" + std::to_string(::getpid()) + "_" + std::to_string(counter++);
}

// The CUDA driver API, loaded at run time so the suite builds and runs without CUDA.
class Cuda
{
public:
    // nullptr when there is no driver or no device.
    static Cuda* get()
    {
        static std::unique_ptr<Cuda> instance = load();
        return instance.get();
    }

    void* alloc(size_t bytes)
    {
        uint64_t ptr = 0;
        expectOk(mMemAlloc(&ptr, bytes), "cuMemAlloc");
        return reinterpret_cast<void*>(ptr);
    }

    void free(void* ptr)
    {
        mMemFree(reinterpret_cast<uint64_t>(ptr));
    }

    void toDevice(void* dst, void const* src, size_t bytes)
    {
        expectOk(mMemcpyHtoD(reinterpret_cast<uint64_t>(dst), src, bytes), "cuMemcpyHtoD");
    }

    void toHost(void* dst, void const* src, size_t bytes)
    {
        expectOk(mMemcpyDtoH(dst, reinterpret_cast<uint64_t>(src), bytes), "cuMemcpyDtoH");
    }

    // Makes device 0's primary context current on the calling thread.
    void bind()
    {
        expectOk(mCtxSetCurrent(mContext), "cuCtxSetCurrent");
    }

private:
    using InitFn = int (*)(unsigned);
    using CountFn = int (*)(int*);
    using RetainFn = int (*)(void**, int);
    using SetCurrentFn = int (*)(void*);
    using AllocFn = int (*)(uint64_t*, size_t);
    using FreeFn = int (*)(uint64_t);
    using HtoDFn = int (*)(uint64_t, void const*, size_t);
    using DtoHFn = int (*)(void*, uint64_t, size_t);

    static void expectOk(int rc, char const* what)
    {
        if (rc != 0)
            throw std::runtime_error(std::string(what) + " failed with CUDA error " + std::to_string(rc));
    }

    static std::unique_ptr<Cuda> load()
    {
        void* lib = ::dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
        if (lib == nullptr)
            return nullptr;
        auto sym = [lib](char const* name) { return ::dlsym(lib, name); };
        auto init = reinterpret_cast<InitFn>(sym("cuInit"));
        auto count = reinterpret_cast<CountFn>(sym("cuDeviceGetCount"));
        auto retain = reinterpret_cast<RetainFn>(sym("cuDevicePrimaryCtxRetain"));
        int devices = 0;
        if (!init || !count || !retain || init(0) != 0 || count(&devices) != 0 || devices == 0)
            return nullptr;
        auto cuda = std::unique_ptr<Cuda>(new Cuda);
        if (retain(&cuda->mContext, 0) != 0)
            return nullptr;
        cuda->mCtxSetCurrent = reinterpret_cast<SetCurrentFn>(sym("cuCtxSetCurrent"));
        cuda->mMemAlloc = reinterpret_cast<AllocFn>(sym("cuMemAlloc_v2"));
        cuda->mMemFree = reinterpret_cast<FreeFn>(sym("cuMemFree_v2"));
        cuda->mMemcpyHtoD = reinterpret_cast<HtoDFn>(sym("cuMemcpyHtoD_v2"));
        cuda->mMemcpyDtoH = reinterpret_cast<DtoHFn>(sym("cuMemcpyDtoH_v2"));
        if (!cuda->mCtxSetCurrent || !cuda->mMemAlloc || !cuda->mMemFree || !cuda->mMemcpyHtoD || !cuda->mMemcpyDtoH)
            return nullptr;
        cuda->bind();
        return cuda;
    }

    void* mContext = nullptr;
    SetCurrentFn mCtxSetCurrent = nullptr;
    AllocFn mMemAlloc = nullptr;
    FreeFn mMemFree = nullptr;
    HtoDFn mMemcpyHtoD = nullptr;
    DtoHFn mMemcpyDtoH = nullptr;
};

// A device buffer freed on scope exit.
class DeviceBuffer
{
public:
    DeviceBuffer(Cuda& cuda, size_t bytes)
        : mCuda(cuda)
        , mPtr(cuda.alloc(bytes))
        , mBytes(bytes)
    {
    }

    ~DeviceBuffer()
    {
        mCuda.free(mPtr);
    }

    DeviceBuffer(DeviceBuffer const&) = delete;
    DeviceBuffer& operator=(DeviceBuffer const&) = delete;

    [[nodiscard]] void* data() const noexcept
    {
        return mPtr;
    }

    void upload(std::vector<char> const& bytes)
    {
        mCuda.toDevice(mPtr, bytes.data(), std::min(bytes.size(), mBytes));
    }

    [[nodiscard]] std::vector<char> download() const
    {
        std::vector<char> out(mBytes);
        mCuda.toHost(out.data(), mPtr, mBytes);
        return out;
    }

private:
    Cuda& mCuda;
    void* mPtr;
    size_t mBytes;
};

} // namespace trtllm_test
