// kvxfer compat header: TensorRT-LLM's one-sided transfer-agent interface
// (cpp/include/tensorrt_llm/executor/transferAgent.h) for each release line
// (kvxferLine.h), written by kvxfer from the documented interfaces. Virtual
// methods are declared in each line's order, which fixes the vtable layout
// the shims must match:
//   TransferStatus:    ~dtor, isCompleted, wait()                       (1.1, 1.2)
//                      ~dtor, isCompleted, wait(timeout_ms), release    (1.3)
//                      ... release, getLastStatusStr                    (1.4)
//   BaseTransferAgent (1.1): ~dtor, registerMemory, deregisterMemory,
//                      loadRemoteAgent(name, AgentDesc), getLocalAgentDesc,
//                      invalidateRemoteAgent, submitTransferRequests, notifySyncMessage,
//                      getNotifiedSyncMessages, getConnectionInfo, connectRemoteAgent,
//                      checkRemoteDescs
//   BaseTransferAgent (1.2 on): ~dtor, registerMemory, deregisterMemory,
//                      loadRemoteAgent(name, AgentDesc), loadRemoteAgent(name, connectionInfo),
//                      invalidateRemoteAgent, getLocalAgentDesc, getLocalConnectionInfo,
//                      submitTransferRequests, notifySyncMessage, getNotifiedSyncMessages,
//                      checkRemoteDescs
//   BaseLoopbackAgent: ~dtor, executeLoopbackRequest
// BaseAgentConfig and AgentDesc grow at their ends from line to line.
// Left out: the VMM descriptor splitter, AgentDesc::serialize/deserialize and
// DynLibLoader, which live in libtensorrt_llm.so and are not part of what a
// wrapper library provides.
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "tensorrt_llm/executor/kvxferLine.h"

namespace tensorrt_llm::executor::kv_cache
{

enum class MemoryType : uint8_t
{
    kDRAM,
    kVRAM,
    kBLK,
    kOBJ,
    kFILE
};

// One contiguous range: address, length in bytes, CUDA device ordinal.
class MemoryDesc
{
public:
    MemoryDesc(std::vector<char> const& vec, uint32_t deviceId = 0)
        : mAddr{reinterpret_cast<uintptr_t>(vec.data())}
        , mLen{vec.size()}
        , mDeviceId{deviceId}
    {
    }

    MemoryDesc(void* addr, size_t len, uint32_t deviceId)
        : mAddr{reinterpret_cast<uintptr_t>(addr)}
        , mLen{len}
        , mDeviceId{deviceId}
    {
    }

    MemoryDesc(uintptr_t addr, size_t len, uint32_t deviceId)
        : mAddr{addr}
        , mLen{len}
        , mDeviceId{deviceId}
    {
    }

    [[nodiscard]] uintptr_t getAddr() const noexcept
    {
        return mAddr;
    }

    [[nodiscard]] size_t getLen() const noexcept
    {
        return mLen;
    }

    [[nodiscard]] uint32_t getDeviceId() const noexcept
    {
        return mDeviceId;
    }

private:
    uintptr_t mAddr;
    size_t mLen;
    uint32_t mDeviceId;
};

class MemoryDescs
{
public:
    MemoryDescs(MemoryType type, std::vector<MemoryDesc> descs)
        : mType{type}
        , mDescs{std::move(descs)}
    {
    }

    [[nodiscard]] MemoryType getType() const noexcept
    {
        return mType;
    }

    [[nodiscard]] std::vector<MemoryDesc> const& getDescs() const noexcept
    {
        return mDescs;
    }

private:
    MemoryType mType;
    std::vector<MemoryDesc> mDescs;
};

// An open file and the number of bytes to move; closes the file when destroyed.
class FileDesc
{
public:
    FileDesc(std::string const& filename, int flags, mode_t mode, size_t len)
        : fd{::open(filename.c_str(), flags, mode)}
        , mLen{len}
    {
        if (fd < 0)
            throw std::runtime_error("Failed to open '" + filename + "'");
    }

    FileDesc(FileDesc&& other) noexcept
        : fd{std::exchange(other.fd, -1)}
        , mLen{std::exchange(other.mLen, 0)}
    {
    }

    FileDesc& operator=(FileDesc&& other) noexcept
    {
        if (this != &other)
        {
            if (fd != -1)
                ::close(fd);
            fd = std::exchange(other.fd, -1);
            mLen = std::exchange(other.mLen, 0);
        }
        return *this;
    }

    FileDesc(FileDesc const&) = delete;
    FileDesc& operator=(FileDesc const&) = delete;

    ~FileDesc()
    {
        if (fd != -1)
            ::close(fd);
    }

    [[nodiscard]] uint64_t getFd() const noexcept
    {
        return fd;
    }

    [[nodiscard]] size_t getLen() const noexcept
    {
        return mLen;
    }

private:
    int fd;
    size_t mLen;
};

class FileDescs
{
public:
    FileDescs(std::vector<FileDesc>&& descs)
        : mDescs(std::move(descs))
    {
    }

    [[nodiscard]] std::vector<FileDesc> const& getDescs() const noexcept
    {
        return mDescs;
    }

private:
    std::vector<FileDesc> mDescs;
};

using TransferDescs = MemoryDescs;
using RegisterDescs = MemoryDescs;
using SyncMessage = std::string;
using ConnectionInfoType = std::string;

#if KVXFER_TRTLLM_LINE >= 103
// Region of VMM-backed device memory, advertised so peers can split descriptors.
struct VramRegionMeta
{
    uintptr_t baseAddr;
    size_t totalLen;
    size_t chunkSize;
};
#endif

// What a peer needs to reach an agent: the backend's opaque descriptor, plus
// (from 1.3) metadata TensorRT-LLM's own code adds.
class AgentDesc final
{
public:
    AgentDesc(std::string backendAgentDesc)
        : mBackendAgentDesc{std::move(backendAgentDesc)}
    {
    }

#if KVXFER_TRTLLM_LINE >= 104
    AgentDesc(std::string backendAgentDesc, std::vector<VramRegionMeta> vramRegions, std::string bounceHandshake = {})
        : mBackendAgentDesc{std::move(backendAgentDesc)}
        , mVramRegions{std::move(vramRegions)}
        , mBounceHandshake{std::move(bounceHandshake)}
    {
    }
#elif KVXFER_TRTLLM_LINE >= 103
    AgentDesc(std::string backendAgentDesc, std::vector<VramRegionMeta> vramRegions)
        : mBackendAgentDesc{std::move(backendAgentDesc)}
        , mVramRegions{std::move(vramRegions)}
    {
    }
#endif

    [[nodiscard]] std::string const& getBackendAgentDesc() const noexcept
    {
        return mBackendAgentDesc;
    }

#if KVXFER_TRTLLM_LINE >= 103
    [[nodiscard]] std::vector<VramRegionMeta> const& getVramRegions() const noexcept
    {
        return mVramRegions;
    }
#endif

#if KVXFER_TRTLLM_LINE >= 104
    [[nodiscard]] std::string const& getBounceHandshake() const noexcept
    {
        return mBounceHandshake;
    }
#endif

private:
    std::string mBackendAgentDesc;
#if KVXFER_TRTLLM_LINE >= 103
    std::vector<VramRegionMeta> mVramRegions;
#endif
#if KVXFER_TRTLLM_LINE >= 104
    std::string mBounceHandshake;
#endif
};

enum class TransferOp : uint8_t
{
    kREAD,
    kWRITE,
};

// One READ or WRITE: srcDescs are local memory, dstDescs memory of agent remoteName.
class TransferRequest
{
public:
    TransferRequest(TransferOp op, TransferDescs srcDescs, TransferDescs dstDescs, std::string const& remoteName,
        std::optional<SyncMessage> syncMessage = std::nullopt)
        : mOp{op}
        , mSrcDescs{std::move(srcDescs)}
        , mDstDescs{std::move(dstDescs)}
        , mRemoteName{remoteName}
        , mSyncMessage{std::move(syncMessage)}
    {
    }

    [[nodiscard]] TransferOp getOp() const noexcept
    {
        return mOp;
    }

    [[nodiscard]] TransferDescs const& getSrcDescs() const noexcept
    {
        return mSrcDescs;
    }

    [[nodiscard]] TransferDescs const& getDstDescs() const noexcept
    {
        return mDstDescs;
    }

    [[nodiscard]] std::string const& getRemoteName() const noexcept
    {
        return mRemoteName;
    }

    [[nodiscard]] std::optional<SyncMessage> getSyncMessage() const noexcept
    {
        return mSyncMessage;
    }

private:
    TransferOp mOp;
    TransferDescs mSrcDescs;
    TransferDescs mDstDescs;
    std::string mRemoteName;
    std::optional<SyncMessage> mSyncMessage;
};

#if KVXFER_TRTLLM_LINE >= 103
enum class TransferState : uint8_t
{
    kIN_PROGRESS,
    kSUCCESS,
    kFAILURE,
};
#endif

class TransferStatus
{
public:
    virtual ~TransferStatus() = default;

    [[nodiscard]] virtual bool isCompleted() const = 0;

#if KVXFER_TRTLLM_LINE >= 103
    // timeout_ms < 0: wait for the end; on timeout the state is kIN_PROGRESS.
    virtual TransferState wait(int64_t timeout_ms = -1) const = 0;

    [[nodiscard]] virtual bool release()
    {
        return false;
    }
#else
    // Blocks until the transfer ends; a failure is an exception.
    virtual void wait() const = 0;
#endif

#if KVXFER_TRTLLM_LINE >= 104
    [[nodiscard]] virtual std::string getLastStatusStr() const
    {
        return {};
    }
#endif
};

struct BaseAgentConfig
{
    std::string mName;
    bool useProgThread;
    bool multiThread;
#if KVXFER_TRTLLM_LINE >= 103
    bool useListenThread;
    bool enableTelemetry;
    std::unordered_map<std::string, std::string> backendParams;
    std::optional<int> rank;
    std::optional<int> worldSize;
#endif
#if KVXFER_TRTLLM_LINE >= 104
    size_t agentBufferSizeMb{0};
    std::unordered_map<std::string, std::string> bounceParams;
#endif
};

class BaseTransferAgent
{
public:
    virtual ~BaseTransferAgent() = default;

    virtual void registerMemory(RegisterDescs const& descs) = 0;

    virtual void deregisterMemory(RegisterDescs const& descs) = 0;

    virtual void loadRemoteAgent(std::string const& name, AgentDesc const& agentDesc) = 0;

#if KVXFER_TRTLLM_LINE >= 102
    virtual void loadRemoteAgent(std::string const& name, ConnectionInfoType const& connectionInfo) = 0;

    virtual void invalidateRemoteAgent(std::string const& name) = 0;

    virtual AgentDesc getLocalAgentDesc() = 0;

    virtual ConnectionInfoType getLocalConnectionInfo() = 0;
#else
    virtual AgentDesc getLocalAgentDesc() = 0;

    virtual void invalidateRemoteAgent(std::string const& name) = 0;
#endif

    [[nodiscard]] virtual std::unique_ptr<TransferStatus> submitTransferRequests(TransferRequest const& request) = 0;

    virtual void notifySyncMessage(std::string const& name, SyncMessage const& syncMessage) = 0;

    // Drains: notifications since the last call, keyed by sender, oldest first.
    virtual std::unordered_map<std::string, std::vector<SyncMessage>> getNotifiedSyncMessages() = 0;

#if KVXFER_TRTLLM_LINE < 102
    virtual ConnectionInfoType getConnectionInfo() = 0;

    virtual void connectRemoteAgent(std::string const& name, ConnectionInfoType const& connectionInfo) = 0;
#endif

    virtual bool checkRemoteDescs(std::string const& name, MemoryDescs const& memoryDescs) = 0;
};

class BaseLoopbackAgent
{
public:
    virtual ~BaseLoopbackAgent() = default;

    // isOffload: memory -> files; otherwise files -> memory.
    virtual void executeLoopbackRequest(MemoryDescs const& memoryDescs, FileDescs const& fileDescs, bool isOffload) = 0;
};

} // namespace tensorrt_llm::executor::kv_cache
