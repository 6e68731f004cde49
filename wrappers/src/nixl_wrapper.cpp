// libtensorrt_llm_nixl_wrapper.so: TensorRT-LLM's BaseTransferAgent /
// TransferStatus (one-sided READ/WRITE plus notifications) forwarded to
// kvxfer's kvx_agent_* / kvx_xfer_* C ABI, and a BaseLoopbackAgent for
// memory <-> file copies. TensorRT-LLM resolves createNixlTransferAgent and
// createNixlLoopbackAgent from this library by name.
#include "device_staging.hpp"
#include "shim_common.hpp"

#include "tensorrt_llm/executor/transferAgent.h"

#include <kvxfer.h>

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace kvc = tensorrt_llm::executor::kv_cache;

namespace kvxfer_trtllm
{
namespace
{

constexpr char const* kWrapperName = "libtensorrt_llm_nixl_wrapper.so";

uint32_t kvxMemoryType(kvc::MemoryType type)
{
    switch (type)
    {
    case kvc::MemoryType::kDRAM: return KVX_MEMORY_DRAM;
    case kvc::MemoryType::kVRAM: return KVX_MEMORY_VRAM;
    default:
        throw std::invalid_argument("kvxfer: only DRAM and VRAM descriptors can be registered or transferred (got "
                                    "MemoryType "
                                    + std::to_string(static_cast<int>(type)) + ")");
    }
}

std::vector<kvx_memory_desc> kvxDescs(kvc::MemoryDescs const& descs)
{
    std::vector<kvx_memory_desc> out;
    out.reserve(descs.getDescs().size());
    for (auto const& d : descs.getDescs())
        out.push_back(
            kvx_memory_desc{static_cast<uint64_t>(d.getAddr()), static_cast<uint64_t>(d.getLen()), d.getDeviceId()});
    return out;
}

#if KVXFER_TRTLLM_LINE >= 103 // the config has backendParams from 1.3 on
// TensorRT-LLM's backendParams as kvxfer's "key=value;key=value"; its
// "num_workers" entry goes to its own field, as TensorRT-LLM's NIXL wrapper reads it.
std::string nixlBackendParams(std::unordered_map<std::string, std::string> const& backendParams, uint32_t& numWorkers)
{
    std::string out;
    for (auto const& [key, value] : backendParams)
    {
        if (key == "num_workers")
        {
            char* end = nullptr;
            unsigned long n = std::strtoul(value.c_str(), &end, 10);
            if (value.empty() || *end != '\0' || n == 0 || n > 1024)
                throw std::invalid_argument(
                    "kvxfer: backendParams num_workers='" + value + "' is not a count of workers");
            numWorkers = static_cast<uint32_t>(n);
            continue;
        }
        if (key.empty() || key.find_first_of(";=") != std::string::npos || value.find(';') != std::string::npos)
            throw std::invalid_argument("kvxfer: backendParams entry '" + key + "=" + value
                                        + "' cannot be passed on (';' and '=' separate entries)");
        out += (out.empty() ? "" : ";") + key + "=" + value;
    }
    return out;
}
#endif

char const* pathName(uint32_t path)
{
    switch (path)
    {
    case KVX_PATH_UCX: return "UCX";
    case KVX_PATH_CUDA_IPC_BATCH: return "batched CUDA IPC";
    case KVX_PATH_NIXL: return "NIXL";
    default: return "unknown path";
    }
}

std::string describe(kvx_xfer_info const& info)
{
    return std::string("peer ") + (info.peer ? info.peer : "?") + ", " + kvx_status_str(info.status) + ", "
           + (info.op == KVX_OP_WRITE ? "write" : "read") + " of " + std::to_string(info.bytes) + " bytes in "
           + std::to_string(info.descs) + " descriptor(s), " + std::to_string(info.posted_descs) + " posted, over "
           + pathName(info.path) + " (" + (info.transport ? info.transport : "") + "), after "
           + std::to_string(info.duration_ns / 1000) + " us";
}

// Thread safety: isCompleted, wait and getLastStatusStr from any threads at
// once; release and destruction by the owner only.
class KvxTransferStatus final : public kvc::TransferStatus
{
public:
    explicit KvxTransferStatus(kvx_xfer* xfer)
        : mXfer(xfer)
    {
    }

    ~KvxTransferStatus() override
    {
        kvx_xfer_destroy(mXfer);
    }

    KvxTransferStatus(KvxTransferStatus const&) = delete;
    KvxTransferStatus& operator=(KvxTransferStatus const&) = delete;

    [[nodiscard]] bool isCompleted() const override
    {
        bool done = false;
        check(kvx_xfer_is_completed(mXfer, &done), "TransferStatus::isCompleted");
        return done;
    }

#if KVXFER_TRTLLM_LINE >= 103
    // timeout_ms < 0 waits until the transfer ends or its own deadline (the
    // agent's KVX_TIMEOUT_MS) passes, which reports kFAILURE: never forever.
    kvc::TransferState wait(int64_t timeout_ms) const override
    {
        switch (waitFor(timeout_ms))
        {
        case KVX_TRANSFER_SUCCESS: return kvc::TransferState::kSUCCESS;
        case KVX_TRANSFER_IN_PROGRESS: return kvc::TransferState::kIN_PROGRESS;
        default: return kvc::TransferState::kFAILURE;
        }
    }

    [[nodiscard]] bool release() override
    {
        bool released = false;
        check(kvx_xfer_cancel(mXfer, &released), "TransferStatus::release");
        return released;
    }
#else
    // Until the transfer ends or its own deadline (KVX_TIMEOUT_MS) passes;
    // anything but success throws, with what happened.
    void wait() const override
    {
        if (waitFor(-1) != KVX_TRANSFER_SUCCESS)
            throw std::runtime_error("kvxfer: TransferStatus::wait: " + lastStatus());
    }
#endif

#if KVXFER_TRTLLM_LINE >= 104
    [[nodiscard]] std::string getLastStatusStr() const override
    {
        return lastStatus();
    }
#endif

private:
    kvx_transfer_state waitFor(int64_t timeout_ms) const
    {
        kvx_transfer_state state = KVX_TRANSFER_FAILURE;
        if (kvx_xfer_wait(mXfer, timeout_ms < 0 ? KVX_TIMEOUT_DEFAULT : timeout_ms, &state) != KVX_OK)
            return KVX_TRANSFER_FAILURE;
        return state;
    }

    // On failure the text also carries the transfer's facts (kvx_xfer_info):
    // peer, status, size, path and how long it ran, for TensorRT-LLM's logs.
    std::string lastStatus() const
    {
        OwnedBytes text;
        if (kvx_xfer_last_status(mXfer, text.out()) != KVX_OK)
            return std::string("kvx_xfer_last_status failed: ") + kvx_last_error();
        std::string out = text.str();
        kvx_xfer_info info{};
        info.struct_size = sizeof(info);
        if (kvx_xfer_info_get(mXfer, &info) == KVX_OK && info.state == KVX_TRANSFER_FAILURE)
            out += " [" + describe(info) + "]";
        return out;
    }

    kvx_xfer* mXfer;
};

// Thread safety: every method may run concurrently from any threads (each is
// one kvx_agent_* call, all documented any-thread), as TensorRT-LLM's
// AgentConnectionManager does; destruction needs all other calls finished.
// TensorRT-LLM's listener port: with TRTLLM_NIXL_PORT = P > 0, the k-th
// listening agent of this process on rank r of w listens on P + r + k * w, so
// ranks and agents never collide; unset or 0, any free port.
uint16_t listenPortFor(kvc::BaseAgentConfig const& config)
{
    static std::atomic<int64_t> listeningAgents{0};
    int64_t base = envNonNegative("TRTLLM_NIXL_PORT", 0);
    if (base == 0)
        return 0;
#if KVXFER_TRTLLM_LINE >= 103
    int64_t rank = config.rank.value_or(0);
    int64_t world = std::max(1, config.worldSize.value_or(1));
#else
    (void)config; // no rank in the config before 1.3
    int64_t rank = 0;
    int64_t world = 1;
#endif
    int64_t port = base + rank + listeningAgents.fetch_add(1) * world;
    if (rank < 0 || port > 65535)
        throw std::invalid_argument("kvxfer: TRTLLM_NIXL_PORT=" + std::to_string(base) + " with rank "
                                    + std::to_string(rank) + " of " + std::to_string(world) + " gives port "
                                    + std::to_string(port) + ", outside 1..65535");
    return static_cast<uint16_t>(port);
}

class KvxTransferAgent final : public kvc::BaseTransferAgent
{
public:
    explicit KvxTransferAgent(kvc::BaseAgentConfig const& config)
    {
        kvx_agent_config kvxConfig;
        check(kvx_agent_config_init(&kvxConfig), "kvx_agent_config_init");
        kvxConfig.name = config.mName.c_str();
#if KVXFER_TRTLLM_LINE >= 103
        kvxConfig.use_listen_thread = config.useListenThread;
#else
        // Before 1.3 the config has no such switch, and getConnectionInfo needs the listener.
        kvxConfig.use_listen_thread = true;
#endif
        if (kvxConfig.use_listen_thread)
            kvxConfig.listen_port = listenPortFor(config);
        // NIXL only. useProgThread asks for a progress thread: kvxfer's automatic
        // choice gives one where it helps (NIXL's spins, so not on small hosts);
        // without it kvxfer's own poller still drives transfers.
        kvxConfig.progress_thread = config.useProgThread ? 0 : 2;
#if KVXFER_TRTLLM_LINE >= 103
        std::string params = nixlBackendParams(config.backendParams, kvxConfig.num_workers);
#else
        std::string params; // no backendParams in the config before 1.3
#endif
        kvxConfig.backend_params = params.empty() ? nullptr : params.c_str();
        // multiThread, enableTelemetry and the bounce settings have no kvxfer counterpart.
        kvx_agent* agent = nullptr;
        check(kvx_agent_create(&kvxConfig, &agent), "createNixlTransferAgent (kvx_agent_create)");
        mAgent.reset(agent);
        uint32_t backend = 0;
        check(kvx_agent_backend(agent, &backend), "kvx_agent_backend");
        logBackendOnce(kWrapperName, "TransferAgent", backend);
    }

    void registerMemory(kvc::RegisterDescs const& descs) override
    {
        auto d = kvxDescs(descs);
        check(kvx_agent_register_memory(mAgent.get(), kvxMemoryType(descs.getType()), d.data(), d.size()),
            "BaseTransferAgent::registerMemory");
    }

    void deregisterMemory(kvc::RegisterDescs const& descs) override
    {
        auto d = kvxDescs(descs);
        check(kvx_agent_deregister_memory(mAgent.get(), kvxMemoryType(descs.getType()), d.data(), d.size()),
            "BaseTransferAgent::deregisterMemory");
    }

    // The descriptor is what getLocalAgentDesc() put in getBackendAgentDesc().
    void loadRemoteAgent(std::string const& name, kvc::AgentDesc const& agentDesc) override
    {
        auto const& blob = agentDesc.getBackendAgentDesc();
        check(kvx_agent_load_remote(
                  mAgent.get(), name.c_str(), reinterpret_cast<uint8_t const*>(blob.data()), blob.size()),
            "BaseTransferAgent::loadRemoteAgent(AgentDesc)");
    }

#if KVXFER_TRTLLM_LINE >= 102
    // Returns once the peer is usable, so a transfer may follow without polling checkRemoteDescs.
    void loadRemoteAgent(std::string const& name, kvc::ConnectionInfoType const& connectionInfo) override
    {
        loadByConnectionInfo(name, connectionInfo, "BaseTransferAgent::loadRemoteAgent(connectionInfo)");
    }

    kvc::ConnectionInfoType getLocalConnectionInfo() override
    {
        return connectionInfo("BaseTransferAgent::getLocalConnectionInfo");
    }
#else
    // The same calls under their names before 1.2.
    void connectRemoteAgent(std::string const& name, kvc::ConnectionInfoType const& connectionInfo) override
    {
        loadByConnectionInfo(name, connectionInfo, "BaseTransferAgent::connectRemoteAgent");
    }

    kvc::ConnectionInfoType getConnectionInfo() override
    {
        return connectionInfo("BaseTransferAgent::getConnectionInfo");
    }
#endif

    // Forgetting an agent that is not loaded is a no-op: TensorRT-LLM
    // invalidates before (re)loading a peer it may never have seen.
    void invalidateRemoteAgent(std::string const& name) override
    {
        kvx_status st = kvx_agent_invalidate_remote(mAgent.get(), name.c_str());
        if (st != KVX_ERR_NOT_FOUND)
            check(st, "BaseTransferAgent::invalidateRemoteAgent");
    }

    kvc::AgentDesc getLocalAgentDesc() override
    {
        OwnedBytes desc;
        check(kvx_agent_get_local_desc(mAgent.get(), desc.out()), "BaseTransferAgent::getLocalAgentDesc");
        return kvc::AgentDesc{desc.str()};
    }

    [[nodiscard]] std::unique_ptr<kvc::TransferStatus> submitTransferRequests(
        kvc::TransferRequest const& request) override
    {
        auto src = kvxDescs(request.getSrcDescs());
        auto dst = kvxDescs(request.getDstDescs());
        if (src.size() != dst.size())
            throw std::invalid_argument("kvxfer: a transfer needs as many source as destination descriptors ("
                                        + std::to_string(src.size()) + " vs " + std::to_string(dst.size()) + ")");
        std::optional<kvc::SyncMessage> sync = request.getSyncMessage();
        kvx_transfer_request req{};
        req.op = request.getOp() == kvc::TransferOp::kREAD ? KVX_OP_READ : KVX_OP_WRITE;
        req.src_type = kvxMemoryType(request.getSrcDescs().getType());
        req.src_descs = src.data();
        req.dst_type = kvxMemoryType(request.getDstDescs().getType());
        req.dst_descs = dst.data();
        req.count = src.size();
        req.remote_name = request.getRemoteName().c_str();
        req.has_sync_message = sync.has_value();
        if (sync)
        {
            req.sync_message = reinterpret_cast<uint8_t const*>(sync->data());
            req.sync_message_len = sync->size();
        }
        kvx_xfer* xfer = nullptr;
        check(kvx_agent_submit(mAgent.get(), &req, &xfer), "BaseTransferAgent::submitTransferRequests");
        return std::make_unique<KvxTransferStatus>(xfer);
    }

    void notifySyncMessage(std::string const& name, kvc::SyncMessage const& syncMessage) override
    {
        check(kvx_agent_notify(
                  mAgent.get(), name.c_str(), reinterpret_cast<uint8_t const*>(syncMessage.data()), syncMessage.size()),
            "BaseTransferAgent::notifySyncMessage");
    }

    std::unordered_map<std::string, std::vector<kvc::SyncMessage>> getNotifiedSyncMessages() override
    {
        kvx_notification_list* raw = nullptr;
        check(kvx_agent_get_notifications(mAgent.get(), &raw), "BaseTransferAgent::getNotifiedSyncMessages");
        std::unique_ptr<kvx_notification_list, void (*)(kvx_notification_list*)> list(raw, kvx_notification_list_free);
        std::unordered_map<std::string, std::vector<kvc::SyncMessage>> out;
        size_t n = kvx_notification_list_len(list.get());
        for (size_t i = 0; i < n; ++i)
        {
            char const* sender = nullptr;
            uint8_t const* message = nullptr;
            size_t len = 0;
            check(kvx_notification_list_get(list.get(), i, &sender, &message, &len), "kvx_notification_list_get");
            out[sender ? sender : ""].emplace_back(reinterpret_cast<char const*>(message), len);
        }
        return out;
    }

    // False while the peer is unknown or the ranges are not (yet) registered by it.
    bool checkRemoteDescs(std::string const& name, kvc::MemoryDescs const& memoryDescs) override
    {
        auto d = kvxDescs(memoryDescs);
        bool ok = false;
        kvx_status st = kvx_agent_check_remote_descs(
            mAgent.get(), name.c_str(), kvxMemoryType(memoryDescs.getType()), d.data(), d.size(), &ok);
        if (st == KVX_ERR_NOT_FOUND)
            return false;
        check(st, "BaseTransferAgent::checkRemoteDescs");
        return ok;
    }

private:
    void loadByConnectionInfo(std::string const& name, std::string const& connectionInfo, char const* what)
    {
        check(kvx_agent_load_remote_by_connection_info(
                  mAgent.get(), name.c_str(), connectionInfo.c_str(), KVX_TIMEOUT_DEFAULT),
            what);
    }

    std::string connectionInfo(char const* what)
    {
        OwnedBytes info;
        check(kvx_agent_get_connection_info(mAgent.get(), info.out()), what);
        return info.str();
    }

    struct AgentDeleter
    {
        void operator()(kvx_agent* agent) const noexcept
        {
            kvx_agent_destroy(agent);
        }
    };

    std::unique_ptr<kvx_agent, AgentDeleter> mAgent;
};

// Memory <-> file copies for KV-cache offload; concurrent requests are fine
// as long as they name different files. Where kvxfer's chosen backend has a
// storage path (NIXL: POSIX for host memory, GDS / GDS_MT for device memory)
// the copy goes through it; otherwise host memory is copied with
// pread/pwrite and device memory staged through pinned host memory. Which
// path serves each memory type is logged once.
class KvxLoopbackAgent final : public kvc::BaseLoopbackAgent
{
public:
    explicit KvxLoopbackAgent(bool multiThread)
        : mMultiThread(multiThread)
    {
    }

    void executeLoopbackRequest(
        kvc::MemoryDescs const& memoryDescs, kvc::FileDescs const& fileDescs, bool isOffload) override
    {
        auto type = memoryDescs.getType();
        if (type != kvc::MemoryType::kDRAM && type != kvc::MemoryType::kVRAM)
            throw std::invalid_argument("kvxfer: loopback (file) transfers support host and device memory only");
        auto const& mem = memoryDescs.getDescs();
        auto const& files = fileDescs.getDescs();
        if (mem.size() != files.size())
            throw std::invalid_argument("kvxfer: loopback request needs one file per memory descriptor");
        std::vector<kvx_memory_desc> memory;
        std::vector<kvx_file_desc> pieces;
        for (size_t i = 0; i < mem.size(); ++i)
        {
            uint64_t len = std::min<uint64_t>(mem[i].getLen(), files[i].getLen());
            if (len == 0)
                continue; // nothing to copy, and no storage path takes an empty piece
            memory.push_back(kvx_memory_desc{mem[i].getAddr(), len, mem[i].getDeviceId()});
            pieces.push_back(kvx_file_desc{static_cast<int32_t>(files[i].getFd()), 0, len});
        }
        if (memory.empty())
            return;
        uint32_t kvxType = kvxMemoryType(type);
        char const* path = nullptr;
        kvx_file_copy_request request{};
        request.mem_type = kvxType;
        request.memory = memory.data();
        request.files = pieces.data();
        request.count = memory.size();
        request.to_file = isOffload;
        request.multi_thread = mMultiThread;
        request.timeout_ms = KVX_TIMEOUT_DEFAULT;
        kvx_status status = kvx_file_copy(KVX_BACKEND_AUTO, &request, &path);
        if (status == KVX_OK)
        {
            logPathOnce(kvxType, (std::string("NIXL's ") + path + " plugin").c_str());
            return;
        }
        if (status != KVX_ERR_UNSUPPORTED && status != KVX_ERR_BACKEND_UNAVAILABLE)
            check(status, isOffload ? "BaseLoopbackAgent::executeLoopbackRequest (memory to files)"
                                    : "BaseLoopbackAgent::executeLoopbackRequest (files to memory)");
        std::string fallback =
            type == kvc::MemoryType::kVRAM ? "pinned host staging, then pread/pwrite" : "pread/pwrite";
        logPathOnce(kvxType, (fallback + " (" + kvx_last_error() + ")").c_str());
        for (size_t i = 0; i < memory.size(); ++i)
        {
            if (type == kvc::MemoryType::kVRAM)
                copyDeviceFile(pieces[i].fd, memory[i].addr, memory[i].len, memory[i].device_id, isOffload);
            else
                copy(pieces[i].fd, reinterpret_cast<char*>(memory[i].addr), memory[i].len, isOffload);
        }
    }

private:
    static void logPathOnce(uint32_t kvxType, char const* path)
    {
        static std::once_flag logged[2];
        std::call_once(logged[kvxType & 1],
            [&]
            {
                if (!infoLogsSilenced())
                    std::fprintf(stderr, "kvxfer %s (%s): LoopbackAgent copies %s memory through %s\n", kvx_version(),
                        kWrapperName, kvxType == KVX_MEMORY_VRAM ? "device" : "host", path);
            });
    }

    static void copy(int fd, char* buffer, size_t len, bool toFile)
    {
        size_t done = 0;
        while (done < len)
        {
            ssize_t n = toFile ? ::pwrite(fd, buffer + done, len - done, static_cast<off_t>(done))
                               : ::pread(fd, buffer + done, len - done, static_cast<off_t>(done));
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0)
                throw std::runtime_error(std::string("kvxfer: loopback ") + (toFile ? "write" : "read")
                                         + " failed: " + std::strerror(errno));
            if (n == 0)
                throw std::runtime_error("kvxfer: loopback read hit the end of the file after " + std::to_string(done)
                                         + " of " + std::to_string(len) + " bytes");
            done += static_cast<size_t>(n);
        }
    }

    bool mMultiThread;
};

kvc::BaseAgentConfig const& requireConfig(kvc::BaseAgentConfig const* config, char const* factory)
{
    if (config == nullptr)
        throw std::invalid_argument(std::string("kvxfer: ") + factory + " called with a null BaseAgentConfig");
    return *config;
}

} // namespace
} // namespace kvxfer_trtllm

extern "C" __attribute__((visibility("default"))) std::unique_ptr<kvc::BaseTransferAgent> createNixlTransferAgent(
    kvc::BaseAgentConfig const* config)
{
    using namespace kvxfer_trtllm;
    requireMatchingRelease(kWrapperName);
    return std::make_unique<KvxTransferAgent>(requireConfig(config, "createNixlTransferAgent"));
}

extern "C" __attribute__((visibility("default"))) std::shared_ptr<kvc::BaseLoopbackAgent> createNixlLoopbackAgent(
    kvc::BaseAgentConfig const* config)
{
    using namespace kvxfer_trtllm;
    requireMatchingRelease(kWrapperName);
    return std::make_shared<KvxLoopbackAgent>(requireConfig(config, "createNixlLoopbackAgent").multiThread);
}
