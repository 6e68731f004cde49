// libtensorrt_llm_ucx_wrapper.so: TensorRT-LLM's ConnectionManager /
// Connection (two-sided, tag-matched send/recv) forwarded to kvxfer's kvx_cm_*
// / kvx_conn_* C ABI. TensorRT-LLM dlopens this library by file name and calls
// makeUcxConnectionManager() on every rank.
#include "rendezvous.hpp"
#include "shim_common.hpp"

#include "tensorrt_llm/executor/cacheCommunicator.h"
#include "tensorrt_llm/executor/dataTransceiverState.h"

#include <kvxfer.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

namespace kvc = tensorrt_llm::executor::kv_cache;

namespace kvxfer_trtllm
{
namespace
{

constexpr char const* kWrapperName = "libtensorrt_llm_ucx_wrapper.so";
// recvConnect waits in slices this long so it notices DataContext's
// termination flag and a shut-down manager.
constexpr int64_t kRecvConnectSliceMs = 100;

// "ip:port", brackets around IPv6 literals (kvx_cm_get_connections' format).
std::string addressOf(kvc::SocketState const& socket)
{
    bool v6 = socket.mIp.find(':') != std::string::npos && socket.mIp.front() != '[';
    return (v6 ? "[" + socket.mIp + "]" : socket.mIp) + ":" + std::to_string(socket.mPort);
}

kvc::SocketState socketStateOf(std::string const& address)
{
    auto colon = address.rfind(':');
    if (colon == std::string::npos)
        throw std::runtime_error("kvxfer: manager address '" + address + "' has no port");
    std::string ip = address.substr(0, colon);
    if (ip.size() >= 2 && ip.front() == '[' && ip.back() == ']')
        ip = ip.substr(1, ip.size() - 2);
    unsigned long port = std::stoul(address.substr(colon + 1));
    if (port == 0 || port > 65535)
        throw std::runtime_error("kvxfer: manager address '" + address + "' has a bad port");
    return kvc::SocketState{static_cast<std::uint16_t>(port), ip};
}

// The bounds TensorRT-LLM's UCX transport reads, with its defaults, taken when
// a manager is made. 0 means "no bound of TensorRT-LLM's own" and becomes
// kvxfer's default timeout (KVX_TIMEOUT_MS, 60 s): kvxfer never waits unbounded.
struct UcxTimeouts
{
    static constexpr int64_t kDefaultHandshakeMs = 5000;

    int64_t handshakeMs;   // connecting: getConnections
    int64_t hostControlMs; // id, request-info and ready-signal messages
    int64_t payloadMs;     // every other tag: the KV payload

    static UcxTimeouts fromEnvironment()
    {
        char const* handshakeVar = "TRTLLM_UCX_CONNECTION_HANDSHAKE_TIMEOUT_MS";
        int64_t handshake = envNonNegative(handshakeVar, kDefaultHandshakeMs);
        if (handshake == 0)
        {
            // TensorRT-LLM refuses an unbounded handshake the same way.
            std::fprintf(stderr, "kvxfer: %s=0 is unsupported; using %lld ms\n", handshakeVar,
                static_cast<long long>(kDefaultHandshakeMs));
            handshake = kDefaultHandshakeMs;
        }
        return UcxTimeouts{handshake, orDefault(envNonNegative("TRTLLM_UCX_HOST_CONTROL_TIMEOUT_MS", 0)),
            orDefault(envNonNegative("TRTLLM_UCX_PAYLOAD_TIMEOUT_MS", 30000))};
    }

    // TensorRT-LLM's TransceiverTag values of the small host-side control
    // messages: kID_TAG, kINFO_SIZE_TAG, kINFO_TAG, kREADY_SIGNAL_TAG (also
    // when encoded in a tag's low byte).
    [[nodiscard]] int64_t forTag(int tag) const noexcept
    {
        bool hostControl = tag == 19 || tag == 22 || tag == 32 || tag == 42 || (tag & 0xFF) == 42;
        return hostControl ? hostControlMs : payloadMs;
    }

private:
    static int64_t orDefault(int64_t ms) noexcept
    {
        return ms == 0 ? KVX_TIMEOUT_DEFAULT : ms;
    }
};

// Thread safety: send and recv from any threads at once (isThreadSafe() says so).
class KvxConnection final : public kvc::Connection
{
public:
    KvxConnection(kvx_conn const* conn, UcxTimeouts const& timeouts)
        : mConn(conn)
        , mTimeouts(timeouts)
    {
    }

    // Blocks until the buffer may be reused; fails within the tag's bound
    // (UcxTimeouts) or as soon as the peer fails.
    void send(kvc::DataContext const& ctx, void const* data, size_t size) const override
    {
        check(kvx_conn_send(mConn, static_cast<uint32_t>(ctx.getTag()), data, size, mTimeouts.forTag(ctx.getTag())),
            "Connection::send");
    }

    void recv(kvc::DataContext const& ctx, void* data, size_t size) const override
    {
        check(kvx_conn_recv(mConn, static_cast<uint32_t>(ctx.getTag()), data, size, mTimeouts.forTag(ctx.getTag())),
            "Connection::recv");
    }

    // kvx_conn_* calls may run concurrently from any thread.
    [[nodiscard]] bool isThreadSafe() const noexcept override
    {
        return true;
    }

#if KVXFER_TRTLLM_LINE >= 103
    // Pre-assigned receive buffers belong to TensorRT-LLM's agent-based
    // manager; a kvxfer connection receives into the caller's buffer.
    void activateBuffer(uint8_t /*bufferKind*/) const override {}

    [[nodiscard]] std::optional<size_t> getPreAssignedBufferId(uint8_t /*bufferKind*/) const override
    {
        return std::nullopt;
    }
#endif

private:
    kvx_conn const* mConn;
    UcxTimeouts mTimeouts;
};

// Thread safety: recvConnect, getConnections, getCommState and isRunning from
// any threads at once; destruction needs all other calls finished.
class KvxConnectionManager final : public kvc::ConnectionManager
{
public:
    KvxConnectionManager()
        : mTimeouts(UcxTimeouts::fromEnvironment())
    {
        RankInfo rankInfo = rankInfoFromEnvironment();
        kvx_cm_config config;
        check(kvx_cm_config_init(&config), "kvx_cm_config_init");
        kvx_cm* cm = nullptr;
        check(kvx_cm_create(&config, &cm), "makeUcxConnectionManager (kvx_cm_create)");
        mCm.reset(cm);

        uint32_t backend = 0;
        check(kvx_cm_backend(cm, &backend), "kvx_cm_backend");
        logBackendOnce(kWrapperName, "ConnectionManager", backend);

        OwnedBytes local;
        check(kvx_cm_get_local_address(cm, local.out()), "kvx_cm_get_local_address");
        std::vector<kvc::SocketState> sockets;
        for (auto const& address : allGatherAddresses(rankInfo, local.str()))
            sockets.push_back(socketStateOf(address));
        mCommState = kvc::CommState(std::move(sockets), rankInfo.rank);
    }

    // Waits for a message with ctx's tag from any peer. Returns nullptr once
    // ctx.getTransferTerminate() is set (1.3 on; before, DataContext has no
    // such flag); throws when the manager is shut down.
    kvc::Connection const* recvConnect(kvc::DataContext const& ctx, void* data, size_t size) override
    {
        for (;;)
        {
#if KVXFER_TRTLLM_LINE >= 103
            if (ctx.getTransferTerminate().load())
                return nullptr;
#endif
            kvx_conn const* conn = nullptr;
            kvx_status st = kvx_cm_recv_connect(
                mCm.get(), static_cast<uint32_t>(ctx.getTag()), data, size, kRecvConnectSliceMs, &conn);
            if (st == KVX_ERR_TIMEOUT)
                continue;
            check(st, "ConnectionManager::recvConnect");
            return wrap(conn);
        }
    }

    [[nodiscard]] std::vector<kvc::Connection const*> getConnections(kvc::CommState const& state) override
    {
        if (!state.isSocketState())
            throw std::invalid_argument("kvxfer: getConnections needs a CommState of sockets, got " + state.toString());
        auto const& sockets = state.getSocketState();
        std::vector<std::string> addresses;
        std::vector<char const*> addressPtrs;
        addresses.reserve(sockets.size());
        for (auto const& socket : sockets)
            addresses.push_back(addressOf(socket));
        for (auto const& a : addresses)
            addressPtrs.push_back(a.c_str());
        std::vector<kvx_conn const*> conns(sockets.size(), nullptr);
        check(kvx_cm_get_connections(
                  mCm.get(), addressPtrs.data(), addressPtrs.size(), mTimeouts.handshakeMs, conns.data()),
            "ConnectionManager::getConnections");
        std::vector<kvc::Connection const*> out;
        out.reserve(conns.size());
        for (auto* conn : conns)
            out.push_back(wrap(conn));
        return out;
    }

    [[nodiscard]] kvc::CommState const& getCommState() const override
    {
        return mCommState;
    }

#if KVXFER_TRTLLM_LINE >= 103
    [[nodiscard]] bool isRunning() const override
    {
        bool running = false;
        return kvx_cm_is_running(mCm.get(), &running) == KVX_OK && running;
    }
#endif

private:
    struct CmDeleter
    {
        void operator()(kvx_cm* cm) const noexcept
        {
            kvx_cm_destroy(cm);
        }
    };

    // kvxfer returns one kvx_conn per peer for the manager's life, so one
    // wrapper object per kvx_conn keeps Connection pointers stable too.
    kvc::Connection const* wrap(kvx_conn const* conn)
    {
        std::lock_guard<std::mutex> lock(mConnMutex);
        auto& slot = mConnections[conn];
        if (!slot)
            slot = std::make_unique<KvxConnection>(conn, mTimeouts);
        return slot.get();
    }

    UcxTimeouts mTimeouts;
    // Declared before the connections so it is destroyed after them: they point into it.
    std::unique_ptr<kvx_cm, CmDeleter> mCm;
    kvc::CommState mCommState;
    std::mutex mConnMutex;
    std::unordered_map<kvx_conn const*, std::unique_ptr<KvxConnection>> mConnections;
};

} // namespace
} // namespace kvxfer_trtllm

// Collective in TensorRT-LLM: every rank calls it. One rank works with no
// setup; several ranks meet through KVX_RANK / KVX_WORLD_SIZE / KVX_RENDEZVOUS.
extern "C" __attribute__((visibility("default"))) std::unique_ptr<kvc::ConnectionManager> makeUcxConnectionManager()
{
    kvxfer_trtllm::requireMatchingRelease(kvxfer_trtllm::kWrapperName);
    return std::make_unique<kvxfer_trtllm::KvxConnectionManager>();
}
