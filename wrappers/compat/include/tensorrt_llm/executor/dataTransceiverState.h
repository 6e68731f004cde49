// kvxfer compat header: the communicator-state types of TensorRT-LLM
// (cpp/include/tensorrt_llm/executor/dataTransceiverState.h), reduced to what
// the transport plug-ins exchange; the same in every line of kvxferLine.h.
// Written by kvxfer from the documented interface; layout and member order
// follow TensorRT-LLM's so objects built here
// are the objects TensorRT-LLM builds. Used only when the shims are compiled
// without -DTRTLLM_INCLUDE_DIR. CacheState / DataTransceiverState are omitted:
// no plug-in interface takes them.
#pragma once

#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <variant>
#include <vector>

#include "tensorrt_llm/executor/kvxferLine.h"

namespace tensorrt_llm::executor::kv_cache
{

// Ranks of an MPI communicator.
struct MpiState
{
    std::vector<std::int32_t> mRanks;

    [[nodiscard]] bool operator==(MpiState const& other) const noexcept
    {
        return mRanks == other.mRanks;
    }
};

// Address of one rank's connection-manager listener.
struct SocketState
{
    std::uint16_t mPort;
    std::string mIp;

    [[nodiscard]] bool operator==(SocketState const& other) const noexcept
    {
        return mPort == other.mPort && mIp == other.mIp;
    }

    [[nodiscard]] std::string toString() const
    {
        return mIp + ":" + std::to_string(mPort);
    }
};

// Name and listener address of one rank's transfer agent.
struct AgentState
{
    AgentState() = default;

    AgentState(std::string agentName, std::string connectionInfo)
        : mAgentName(std::move(agentName))
        , mConnectionInfo(std::move(connectionInfo))
    {
    }

    [[nodiscard]] bool operator==(AgentState const& other) const noexcept
    {
        return mAgentName == other.mAgentName && mConnectionInfo == other.mConnectionInfo;
    }

    std::string mAgentName;
    std::string mConnectionInfo;
};

// Every rank's address plus the index of the calling rank.
class CommState final
{
public:
    CommState() = default;

    explicit CommState(std::vector<std::int32_t> ranks, int selfIdx = -1)
        : mState{MpiState{std::move(ranks)}}
        , mSelfIdx{selfIdx}
    {
    }

    explicit CommState(std::vector<SocketState> sockets, int selfIdx = -1)
        : mState{std::move(sockets)}
        , mSelfIdx{selfIdx}
    {
    }

    CommState(std::uint16_t port, std::string ip)
        : mState{std::vector<SocketState>{SocketState{port, std::move(ip)}}}
        , mSelfIdx{0}
    {
    }

    explicit CommState(std::vector<AgentState> agents, int selfIdx = -1)
        : mState{std::move(agents)}
        , mSelfIdx{selfIdx}
    {
    }

    [[nodiscard]] bool isMpiState() const noexcept
    {
        return std::holds_alternative<MpiState>(mState);
    }

    [[nodiscard]] bool isSocketState() const noexcept
    {
        return std::holds_alternative<std::vector<SocketState>>(mState);
    }

    [[nodiscard]] bool isAgentState() const noexcept
    {
        return std::holds_alternative<std::vector<AgentState>>(mState);
    }

    [[nodiscard]] MpiState const& getMpiState() const
    {
        return std::get<MpiState>(mState);
    }

    [[nodiscard]] std::vector<SocketState> const& getSocketState() const
    {
        return std::get<std::vector<SocketState>>(mState);
    }

    [[nodiscard]] std::vector<AgentState> const& getAgentState() const
    {
        return std::get<std::vector<AgentState>>(mState);
    }

    [[nodiscard]] int getSelfIdx() const noexcept
    {
        return mSelfIdx;
    }

    [[nodiscard]] bool operator==(CommState const& other) const noexcept
    {
        return mState == other.mState;
    }

    [[nodiscard]] std::string toString() const
    {
        std::ostringstream out;
        if (isSocketState())
        {
            out << "SOCKET:[";
            for (auto const& socket : getSocketState())
                out << socket.toString() << ",";
            out << "]";
        }
        else if (isAgentState())
        {
            out << "AGENT:[";
            for (auto const& agent : getAgentState())
                out << agent.mAgentName << ",";
            out << "]";
        }
        else if (isMpiState())
        {
            out << "MPI:[";
            for (auto rank : getMpiState().mRanks)
                out << rank << ",";
            out << "]";
        }
        return out.str();
    }

private:
    std::variant<std::monostate, MpiState, std::vector<SocketState>, std::vector<AgentState>> mState;
    int mSelfIdx{-1};
};

} // namespace tensorrt_llm::executor::kv_cache
