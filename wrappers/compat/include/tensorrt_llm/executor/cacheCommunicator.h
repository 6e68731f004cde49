// kvxfer compat header: TensorRT-LLM 1.4.0rc1's two-sided transport interface
// (cpp/include/tensorrt_llm/executor/cacheCommunicator.h), written by kvxfer
// from the documented interface. Virtual methods are declared in that
// release's order, which fixes the vtable layout the shims must match:
//   Connection:        ~dtor, send, recv, isThreadSafe, activateBuffer, getPreAssignedBufferId
//   ConnectionManager: ~dtor, recvConnect, getConnections, getCommState, isRunning
#pragma once

#include "tensorrt_llm/executor/dataTransceiverState.h"

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <vector>

namespace tensorrt_llm::executor::kv_cache
{

// Tag of one message, plus a flag a waiting receiver watches to give up.
struct DataContext
{
public:
    explicit DataContext(int tag, std::atomic<bool> const& transferTerminate = sDefaultTransferTerminate)
        : mTag{tag}
        , mTransferTerminate{transferTerminate}
    {
    }

    [[nodiscard]] int getTag() const noexcept
    {
        return mTag;
    }

    [[nodiscard]] std::atomic<bool> const& getTransferTerminate() const noexcept
    {
        return mTransferTerminate;
    }

private:
    int const mTag;
    std::atomic<bool> const& mTransferTerminate;
    static inline std::atomic<bool> sDefaultTransferTerminate{false};
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

    // Used by the agent-based manager inside TensorRT-LLM only.
    virtual void activateBuffer(uint8_t /*bufferKind*/) const {}

    [[nodiscard]] virtual std::optional<size_t> getPreAssignedBufferId(uint8_t /*bufferKind*/) const
    {
        return std::nullopt;
    }
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

    [[nodiscard]] virtual bool isRunning() const = 0;
};

} // namespace tensorrt_llm::executor::kv_cache
