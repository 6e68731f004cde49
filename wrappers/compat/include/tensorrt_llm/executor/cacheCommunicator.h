// kvxfer compat header: TensorRT-LLM's two-sided transport interface
// (cpp/include/tensorrt_llm/executor/cacheCommunicator.h) for each release
// line (kvxferLine.h), written by kvxfer from the documented interfaces.
// Virtual methods are declared in each line's order, which fixes the vtable
// layout the shims must match:
//   Connection:        ~dtor, send, recv, isThreadSafe                   (1.1, 1.2)
//                      ... isThreadSafe, activateBuffer, getPreAssignedBufferId (1.3 on)
//   ConnectionManager: ~dtor, recvConnect, getConnections, getCommState  (1.1, 1.2)
//                      ... getCommState, isRunning                       (1.3 on)
// DataContext is an int tag before 1.3, then also a termination flag.
#pragma once

#include "tensorrt_llm/executor/dataTransceiverState.h"

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <vector>

namespace tensorrt_llm::executor::kv_cache
{

// Tag of one message, plus (from 1.3) a flag a waiting receiver watches to give up.
struct DataContext
{
public:
#if KVXFER_TRTLLM_LINE >= 103
    explicit DataContext(int tag, std::atomic<bool> const& transferTerminate = sDefaultTransferTerminate)
        : mTag{tag}
        , mTransferTerminate{transferTerminate}
    {
    }
#else
    explicit DataContext(int tag)
        : mTag{tag}
    {
    }
#endif

    [[nodiscard]] int getTag() const noexcept
    {
        return mTag;
    }

#if KVXFER_TRTLLM_LINE >= 103
    [[nodiscard]] std::atomic<bool> const& getTransferTerminate() const noexcept
    {
        return mTransferTerminate;
    }
#endif

private:
    int const mTag;
#if KVXFER_TRTLLM_LINE >= 103
    std::atomic<bool> const& mTransferTerminate;
    static inline std::atomic<bool> sDefaultTransferTerminate{false};
#endif
};

// One peer; blocking, tag-matched send and receive of host or device memory.
class Connection
{
public:
    virtual ~Connection() = default;

    virtual void send(DataContext const& ctx, void const* data, size_t size) const = 0;

    virtual void recv(DataContext const& ctx, void* data, size_t size) const = 0;

    [[nodiscard]] virtual bool isThreadSafe() const noexcept
    {
        return false;
    }

#if KVXFER_TRTLLM_LINE >= 103
    // Used by the agent-based manager inside TensorRT-LLM only.
    virtual void activateBuffer(uint8_t /*bufferKind*/) const {}

    [[nodiscard]] virtual std::optional<size_t> getPreAssignedBufferId(uint8_t /*bufferKind*/) const
    {
        return std::nullopt;
    }
#endif
};

// Owns the connections of one rank; peers are named by a CommState.
class ConnectionManager
{
public:
    virtual ~ConnectionManager() = default;

    // Wait for a message with ctx's tag from any peer; return the connection it came on.
    virtual Connection const* recvConnect(DataContext const& ctx, void* data, size_t size) = 0;

    // One connection per entry of state, cached: the same peer gives the same pointer.
    [[nodiscard]] virtual std::vector<Connection const*> getConnections(CommState const& state) = 0;

    [[nodiscard]] virtual CommState const& getCommState() const = 0;

#if KVXFER_TRTLLM_LINE >= 103
    [[nodiscard]] virtual bool isRunning() const = 0;
#endif
};

} // namespace tensorrt_llm::executor::kv_cache
