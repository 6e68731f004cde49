// TensorRT-LLM's transfer-agent scenarios (cpp/tests/unit_tests/executor/
// transferAgentTest.cpp: Basic, Basic2, Connect, SyncMessage, DeviceMemory)
// against libtensorrt_llm_nixl_wrapper.so, plus the contract points those
// tests leave implicit: errors surface as exceptions, many threads submit at
// once, the loopback agent. The backend is whatever TRTLLM_USE_*_KVCACHE
// selects (CTest registers every test once per backend).
#include "trtllm_test_util.hpp"

#include <arpa/inet.h>
#include <csignal>
#include <cstdio>
#include <fcntl.h>
#include <netinet/in.h>
#include <set>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>

extern char** environ;

using namespace trtllm_test;

namespace
{

using kvc::MemoryDesc;
using kvc::MemoryDescs;
using kvc::MemoryType;
using kvc::TransferOp;
using kvc::TransferRequest;

// Registers in the constructor, deregisters in the destructor (as TensorRT-LLM's own test does).
class Registered
{
public:
    Registered(kvc::BaseTransferAgent& agent, MemoryDescs descs)
        : mAgent(agent)
        , mDescs(std::move(descs))
    {
        mAgent.registerMemory(mDescs);
    }

    ~Registered()
    {
        mAgent.deregisterMemory(mDescs);
    }

    [[nodiscard]] MemoryDescs const& descs() const noexcept
    {
        return mDescs;
    }

private:
    kvc::BaseTransferAgent& mAgent;
    MemoryDescs mDescs;
};

MemoryDescs hostDescs(std::vector<char>& buffer)
{
    return MemoryDescs{MemoryType::kDRAM, {MemoryDesc{buffer}}};
}

// Polls checkRemoteDescs until the peer's memory is visible (TensorRT-LLM's tests busy-poll the same way).
void waitRemoteDescs(kvc::BaseTransferAgent& agent, std::string const& name, MemoryDescs const& descs)
{
    auto deadline = std::chrono::steady_clock::now() + kWaitLimit;
    while (!agent.checkRemoteDescs(name, descs))
    {
        ASSERT_LT(std::chrono::steady_clock::now(), deadline) << "checkRemoteDescs(" << name << ") never became true";
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
}

using Notifications = std::unordered_map<std::string, std::vector<std::string>>;

// Polls getNotifiedSyncMessages until something arrives (empty on timeout).
Notifications waitNotifications(kvc::BaseTransferAgent& agent)
{
    auto deadline = std::chrono::steady_clock::now() + kWaitLimit;
    do
    {
        auto got = agent.getNotifiedSyncMessages();
        if (!got.empty())
            return got;
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    } while (std::chrono::steady_clock::now() < deadline);
    return {};
}

// CommState{[{1234, "127.0.0.1"}], 0} in TensorRT-LLM's serialization:
// i32 selfIdx, u64 variant index (2 = sockets), u64 count, then per socket
// u16 port and a u64-length-prefixed ip. Binary, with NUL bytes.
std::string serializeCommState(kvc::CommState const& state)
{
    std::string out;
    auto put = [&out](auto value) { out.append(reinterpret_cast<char const*>(&value), sizeof value); };
    put(static_cast<int32_t>(state.getSelfIdx()));
    put(static_cast<uint64_t>(2));
    put(static_cast<uint64_t>(state.getSocketState().size()));
    for (auto const& socket : state.getSocketState())
    {
        put(socket.mPort);
        put(static_cast<uint64_t>(socket.mIp.size()));
        out += socket.mIp;
    }
    return out;
}

kvc::CommState deserializeCommState(std::string const& bytes)
{
    size_t pos = 0;
    auto get = [&](auto& value)
    {
        if (pos + sizeof value > bytes.size())
            throw std::runtime_error("truncated CommState");
        std::memcpy(&value, bytes.data() + pos, sizeof value);
        pos += sizeof value;
    };
    int32_t selfIdx = 0;
    uint64_t index = 0;
    uint64_t count = 0;
    get(selfIdx);
    get(index);
    get(count);
    if (index != 2 || count > 1024)
        throw std::runtime_error("not a socket CommState");
    std::vector<kvc::SocketState> sockets;
    for (uint64_t i = 0; i < count; ++i)
    {
        kvc::SocketState s{};
        uint64_t len = 0;
        get(s.mPort);
        get(len);
        if (pos + len > bytes.size())
            throw std::runtime_error("truncated CommState ip");
        s.mIp = bytes.substr(pos, len);
        pos += len;
        sockets.push_back(s);
    }
    return kvc::CommState{std::move(sockets), selfIdx};
}

// Two agents in one process, as in every upstream scenario.
struct AgentPair
{
    std::string name0 = uniqueName("agent0");
    std::string name1 = uniqueName("agent1");
    std::unique_ptr<kvc::BaseTransferAgent> agent0 = makeTransferAgent(name0);
    std::unique_ptr<kvc::BaseTransferAgent> agent1 = makeTransferAgent(name1);

    // agent0 loads agent1 by connection info and polls until `remote` is visible.
    void connect(MemoryDescs const& remote)
    {
        loadByConnectionInfo(*agent0, name1, localConnectionInfo(*agent1));
        ASSERT_NO_FATAL_FAILURE(waitRemoteDescs(*agent0, name1, remote));
    }
};

// Submits and waits for success.
void transfer(kvc::BaseTransferAgent& agent, TransferRequest const& request)
{
    auto status = agent.submitTransferRequests(request);
    ASSERT_EQ(waitFor(*status), TransferState::kSUCCESS) << statusText(*status);
    EXPECT_TRUE(status->isCompleted());
}

void runTransfer(TransferOp op)
{
    AgentPair pair;
    std::vector<char> mem0(100, 10);
    std::vector<char> mem1(100, 1);
    Registered reg0(*pair.agent0, hostDescs(mem0));
    Registered reg1(*pair.agent1, hostDescs(mem1));
    ASSERT_NO_FATAL_FAILURE(pair.connect(reg1.descs()));
    ASSERT_NO_FATAL_FAILURE(transfer(*pair.agent0, TransferRequest{op, reg0.descs(), reg1.descs(), pair.name1}));
    // WRITE pushes local (src) into remote (dst); READ pulls remote (dst) into local (src).
    if (op == TransferOp::kWRITE)
        EXPECT_EQ(mem1, std::vector<char>(100, 10));
    else
        EXPECT_EQ(mem0, std::vector<char>(100, 1));
    pair.agent0->invalidateRemoteAgent(pair.name1);
}

} // namespace

TEST(TransferAgent, Basic)
{
    runTransfer(TransferOp::kWRITE);
}

TEST(TransferAgent, Basic2)
{
    runTransfer(TransferOp::kREAD);
}

// Load by descriptor (AgentDesc) instead of connection info, as
// TensorRT-LLM's AgentConnectionManager does on the context side.
TEST(TransferAgent, LoadByAgentDesc)
{
    AgentPair pair;
    auto payload = randomBytes(4096, 7);
    std::vector<char> mem0 = payload;
    std::vector<char> mem1(payload.size(), 0);
    Registered reg0(*pair.agent0, hostDescs(mem0));
    Registered reg1(*pair.agent1, hostDescs(mem1));
    kvc::AgentDesc desc = pair.agent1->getLocalAgentDesc();
    EXPECT_FALSE(desc.getBackendAgentDesc().empty());
    pair.agent0->invalidateRemoteAgent(pair.name1); // unknown peer: a no-op, as TensorRT-LLM relies on
    pair.agent0->loadRemoteAgent(pair.name1, desc);
    EXPECT_TRUE(pair.agent0->checkRemoteDescs(pair.name1, reg1.descs()));
    ASSERT_NO_FATAL_FAILURE(
        transfer(*pair.agent0, TransferRequest{TransferOp::kWRITE, reg0.descs(), reg1.descs(), pair.name1}));
    EXPECT_EQ(mem1, payload);
    pair.agent0->invalidateRemoteAgent(pair.name1);
    EXPECT_FALSE(pair.agent0->checkRemoteDescs(pair.name1, reg1.descs()));
}

TEST(TransferAgent, Connect)
{
    std::string name0 = uniqueName("agent0");
    std::string name1 = uniqueName("agent1");
    std::string name2 = uniqueName("agent2");
    auto agent0 = makeTransferAgent(name0);
    auto agent1 = makeTransferAgent(name1);
    auto agent2 = makeTransferAgent(name2);
    std::vector<char> shared(100, 10);
    std::vector<char> mem1(100, 1);
    // agent0 and agent2 register the same host buffer.
    Registered reg0(*agent0, hostDescs(shared));
    Registered reg2(*agent2, hostDescs(shared));
    Registered reg1(*agent1, hostDescs(mem1));
    std::string info1 = localConnectionInfo(*agent1);
    ASSERT_FALSE(info1.empty());

    for (auto* writer : {agent0.get(), agent2.get()})
    {
        std::fill(mem1.begin(), mem1.end(), 1);
        loadByConnectionInfo(*writer, name1, info1);
        ASSERT_NO_FATAL_FAILURE(waitRemoteDescs(*writer, name1, reg1.descs()));
        ASSERT_NO_FATAL_FAILURE(
            transfer(*writer, TransferRequest{TransferOp::kWRITE, reg0.descs(), reg1.descs(), name1}));
        EXPECT_EQ(mem1, shared);
    }
    agent0->invalidateRemoteAgent(name1);
    agent2->invalidateRemoteAgent(name1);
}

TEST(TransferAgent, SyncMessage)
{
    AgentPair pair;
    auto& agent0 = pair.agent0;
    auto& agent1 = pair.agent1;
    auto const& name0 = pair.name0;
    auto const& name1 = pair.name1;
    std::vector<char> mem0(100, 10);
    std::vector<char> mem1(100, 1);
    Registered reg0(*agent0, hostDescs(mem0));
    Registered reg1(*agent1, hostDescs(mem1));
    ASSERT_NO_FATAL_FAILURE(pair.connect(reg1.descs()));

    // (a) a WRITE without a message, then a separate notification: exactly one
    // notification arrives, so the WRITE itself notified nobody.
    auto status =
        agent0->submitTransferRequests(TransferRequest{TransferOp::kWRITE, reg0.descs(), reg1.descs(), name1});
    agent0->notifySyncMessage(name1, "agent_sync_message");
    auto got = waitNotifications(*agent1);
    ASSERT_EQ(got.size(), 1u);
    ASSERT_EQ(got.count(name0), 1u);
    EXPECT_EQ(got[name0], std::vector<std::string>{"agent_sync_message"});
    ASSERT_EQ(waitFor(*status), TransferState::kSUCCESS) << statusText(*status);
    EXPECT_TRUE(status->isCompleted());
    EXPECT_EQ(mem1, mem0);
    EXPECT_TRUE(agent1->getNotifiedSyncMessages().empty()) << "notifications are drained once";

    // (b) a notification on its own.
    agent0->notifySyncMessage(name1, "agent_sync_message2");
    got = waitNotifications(*agent1);
    ASSERT_EQ(got.size(), 1u);
    EXPECT_EQ(got[name0], std::vector<std::string>{"agent_sync_message2"});

    // (c) the other way round, after loading by connection info.
    loadByConnectionInfo(*agent1, name0, localConnectionInfo(*agent0));
    agent1->notifySyncMessage(name0, "agent_sync_message_back");
    got = waitNotifications(*agent0);
    ASSERT_EQ(got.size(), 1u);
    EXPECT_EQ(got[name1], std::vector<std::string>{"agent_sync_message_back"});

    // (d) WRITE with an attached message, without polling checkRemoteDescs
    // first: loadRemoteAgent(connectionInfo) returned only once agent0 was usable.
    auto payload = randomBytes(mem1.size(), 3);
    std::copy(payload.begin(), payload.end(), mem1.begin());
    status = agent1->submitTransferRequests(
        TransferRequest{TransferOp::kWRITE, reg1.descs(), reg0.descs(), name0, std::string("attached")});
    got = waitNotifications(*agent0);
    ASSERT_EQ(got.size(), 1u);
    EXPECT_EQ(got[name1], std::vector<std::string>{"attached"});
    // The message is delivered after the data.
    EXPECT_EQ(mem0, payload);
    ASSERT_EQ(waitFor(*status), TransferState::kSUCCESS) << statusText(*status);

    // (e) a serialized CommState (binary, NUL bytes) round-trips byte-exactly.
    kvc::CommState state{std::vector<kvc::SocketState>{{1234, "127.0.0.1"}}, 0};
    std::string bytes = serializeCommState(state);
    ASSERT_NE(bytes.find('\0'), std::string::npos);
    agent0->notifySyncMessage(name1, bytes);
    got = waitNotifications(*agent1);
    ASSERT_EQ(got.size(), 1u);
    ASSERT_EQ(got[name0].size(), 1u);
    EXPECT_EQ(got[name0][0], bytes);
    EXPECT_EQ(deserializeCommState(got[name0][0]), state);

    // An agent may notify itself (TensorRT-LLM's AgentConnectionManager does).
    agent0->notifySyncMessage(name0, "self");
    got = waitNotifications(*agent0);
    EXPECT_EQ(got[name0], std::vector<std::string>{"self"});

    agent0->invalidateRemoteAgent(name1);
    agent1->invalidateRemoteAgent(name0);
}

TEST(TransferAgent, DeviceMemory)
{
    Cuda* cuda = Cuda::get();
    if (cuda == nullptr)
        GTEST_SKIP() << "no CUDA driver or device";
    AgentPair pair;
    DeviceBuffer dev0(*cuda, 100);
    DeviceBuffer dev1(*cuda, 100);
    dev0.upload(std::vector<char>(100, 10));
    dev1.upload(std::vector<char>(100, 1));
    Registered reg0(*pair.agent0, MemoryDescs{MemoryType::kVRAM, {MemoryDesc{dev0.data(), 100, 0}}});
    Registered reg1(*pair.agent1, MemoryDescs{MemoryType::kVRAM, {MemoryDesc{dev1.data(), 100, 0}}});
    ASSERT_NO_FATAL_FAILURE(pair.connect(reg1.descs()));
    ASSERT_NO_FATAL_FAILURE(
        transfer(*pair.agent0, TransferRequest{TransferOp::kWRITE, reg0.descs(), reg1.descs(), pair.name1}));
    EXPECT_EQ(dev1.download(), std::vector<char>(100, 10));
    pair.agent0->invalidateRemoteAgent(pair.name1);
}

// AgentConnectionManager submits, notifies and drains from several threads at once.
TEST(TransferAgent, ConcurrentSubmitters)
{
    constexpr int kThreads = 8;
    constexpr size_t kSlice = 4096;
    AgentPair pair;
    auto& agent0 = pair.agent0;
    auto& agent1 = pair.agent1;
    auto const& name0 = pair.name0;
    auto const& name1 = pair.name1;
    auto payload = randomBytes(kThreads * kSlice, 11);
    std::vector<char> mem0 = payload;
    std::vector<char> mem1(payload.size(), 0);
    Registered reg0(*agent0, hostDescs(mem0));
    Registered reg1(*agent1, hostDescs(mem1));
    ASSERT_NO_FATAL_FAILURE(pair.connect(reg1.descs()));

    std::vector<std::thread> threads;
    std::atomic<int> failures{0};
    for (int t = 0; t < kThreads; ++t)
        threads.emplace_back(
            [&, t]
            {
                try
                {
                    MemoryDescs src{MemoryType::kDRAM, {MemoryDesc{mem0.data() + t * kSlice, kSlice, 0}}};
                    MemoryDescs dst{MemoryType::kDRAM, {MemoryDesc{mem1.data() + t * kSlice, kSlice, 0}}};
                    auto status = agent0->submitTransferRequests(
                        TransferRequest{TransferOp::kWRITE, src, dst, name1, "slice" + std::to_string(t)});
                    if (waitFor(*status) != TransferState::kSUCCESS)
                        ++failures;
                }
                catch (std::exception const& e)
                {
                    ADD_FAILURE() << "thread " << t << ": " << e.what();
                    ++failures;
                }
            });
    std::set<std::string> seen;
    auto deadline = std::chrono::steady_clock::now() + kWaitLimit;
    while (seen.size() < kThreads && std::chrono::steady_clock::now() < deadline)
        for (auto& [sender, messages] : agent1->getNotifiedSyncMessages())
        {
            EXPECT_EQ(sender, name0);
            seen.insert(messages.begin(), messages.end());
        }
    for (auto& t : threads)
        t.join();
    EXPECT_EQ(failures.load(), 0);
    EXPECT_EQ(seen.size(), static_cast<size_t>(kThreads));
    EXPECT_EQ(mem1, payload);
}

// Failures reach TensorRT-LLM as exceptions, never as crashes or silent success.
TEST(TransferAgent, ErrorsAreExceptions)
{
    auto create = reinterpret_cast<CreateTransferAgent>(wrapperSymbol(kNixlWrapper, "createNixlTransferAgent"));
    EXPECT_THROW(create(nullptr), std::exception);

    std::string name0 = uniqueName("agent0");
    auto agent0 = makeTransferAgent(name0);
    std::vector<char> mem(64, 0);
    EXPECT_THROW(agent0->registerMemory(MemoryDescs{MemoryType::kFILE, {MemoryDesc{mem}}}), std::exception);
    EXPECT_THROW(agent0->loadRemoteAgent("nobody", kvc::AgentDesc{std::string("\x01garbage\x00", 9)}), std::exception);
    Registered reg(*agent0, hostDescs(mem));
    EXPECT_THROW(
        agent0->submitTransferRequests(TransferRequest{TransferOp::kWRITE, reg.descs(), reg.descs(), "nobody"}),
        std::exception);
    EXPECT_FALSE(agent0->checkRemoteDescs("nobody", reg.descs()));
    EXPECT_THROW(
        agent0->deregisterMemory(MemoryDescs{MemoryType::kDRAM, {MemoryDesc{mem.data() + 1, 8, 0}}}), std::exception);
}

#if KVXFER_TRTLLM_LINE >= 103 // the config has backendParams from 1.3 on
// backendParams reach kvxfer (num_workers as its own setting); entries it
// cannot represent are refused rather than dropped.
TEST(TransferAgent, BackendParams)
{
    auto create = reinterpret_cast<CreateTransferAgent>(wrapperSymbol(kNixlWrapper, "createNixlTransferAgent"));
    auto config = [](std::unordered_map<std::string, std::string> params)
    { return agentConfig(uniqueName("params"), true, std::move(params)); };
    auto ok = config({{"num_workers", "2"}});
    EXPECT_NE(create(&ok), nullptr);
    auto badWorkers = config({{"num_workers", "two"}});
    EXPECT_THROW(create(&badWorkers), std::exception);
    auto badEntry = config({{"a;b", "1"}});
    EXPECT_THROW(create(&badEntry), std::exception);
}
#endif

TEST(LoopbackAgent, HostMemoryToFileAndBack)
{
    auto agent = makeLoopbackAgent(uniqueName("loopback"));
    ASSERT_NE(agent, nullptr);
    char path[] = "/tmp/kvxfer_loopbackXXXXXX";
    int fd = ::mkstemp(path);
    ASSERT_GE(fd, 0);
    ::close(fd);
    auto payload = randomBytes(100, 5);
    std::vector<char> back(100, 0);
    {
        std::vector<kvc::FileDesc> files;
        files.emplace_back(path, O_RDWR, 0600, payload.size());
        ::testing::internal::CaptureStderr();
        agent->executeLoopbackRequest(hostDescs(payload), kvc::FileDescs{std::move(files)}, true);
        std::string log = ::testing::internal::GetCapturedStderr();
        std::fprintf(stderr, "%s", log.c_str());
        // Under CTest each test is its own process, so this is the first loopback
        // request there and the wrapper names the path it chose.
        if (std::getenv("KVX_TRTLLM_CONFIGURED") != nullptr)
        {
            EXPECT_NE(log.find(nixlSelected() ? "copies host memory through NIXL's POSIX plugin"
                                              : "copies host memory through pread/pwrite"),
                std::string::npos)
                << log;
        }
    }
    {
        std::vector<kvc::FileDesc> files;
        files.emplace_back(path, O_RDONLY, 0600, back.size());
        agent->executeLoopbackRequest(hostDescs(back), kvc::FileDescs{std::move(files)}, false);
    }
    ::unlink(path);
    EXPECT_EQ(back, payload);
    // Reading more than the file holds is refused, on every path, and fills nothing.
    {
        std::vector<char> longer(4096, 'x');
        std::vector<kvc::FileDesc> files;
        files.emplace_back(path, O_RDWR | O_CREAT | O_TRUNC, 0600, longer.size());
        EXPECT_THROW(
            agent->executeLoopbackRequest(hostDescs(longer), kvc::FileDescs{std::move(files)}, false), std::exception);
        EXPECT_EQ(longer, std::vector<char>(4096, 'x'));
        ::unlink(path);
    }
    // One file per memory descriptor, or the request is refused before anything moves.
    std::vector<kvc::FileDesc> none;
    EXPECT_THROW(agent->executeLoopbackRequest(hostDescs(back), kvc::FileDescs{std::move(none)}, true), std::exception);
}

// TensorRT-LLM's LoopbackAgentTest GpuToFile then FileToGpu: device memory
// offloaded to a file and loaded back into other device memory, through
// NIXL's GDS plugin where NIXL is selected and GDS loads, else staged through
// pinned host memory in 8 MiB pieces (three here, the last one short).
TEST(LoopbackAgent, DeviceMemoryToFileAndBack)
{
    Cuda* cuda = Cuda::get();
    if (cuda == nullptr)
        GTEST_SKIP() << "no CUDA device";
    constexpr size_t kBytes = (20u << 20) + 123;
    auto payload = bulkBytes(kBytes, 31);
    DeviceBuffer source(*cuda, kBytes);
    source.upload(payload);
    auto agent = makeLoopbackAgent(uniqueName("vram-loopback"));
    char path[] = "/tmp/kvxfer_vram_loopbackXXXXXX";
    int fd = ::mkstemp(path);
    ASSERT_GE(fd, 0);
    ::close(fd);
    {
        std::vector<kvc::FileDesc> files;
        files.emplace_back(path, O_WRONLY | O_TRUNC, 0600, kBytes);
        ::testing::internal::CaptureStderr();
        agent->executeLoopbackRequest(MemoryDescs{MemoryType::kVRAM, {MemoryDesc{source.data(), kBytes, 0}}},
            kvc::FileDescs{std::move(files)}, true);
        std::string log = ::testing::internal::GetCapturedStderr();
        std::fprintf(stderr, "%s", log.c_str());
        // NIXL selected: its GDS plugin where it loads here, else staging that says why GDS could not serve.
        if (std::getenv("KVX_TRTLLM_CONFIGURED") != nullptr)
        {
            bool viaGds = log.find("copies device memory through NIXL's GDS") != std::string::npos;
            bool staged = log.find("copies device memory through pinned host staging") != std::string::npos;
            EXPECT_TRUE(nixlSelected()
                            ? (viaGds || (staged && log.find("no NIXL storage plugin can serve") != std::string::npos))
                            : (staged && log.find("no storage path") != std::string::npos))
                << log;
        }
    }
    std::vector<char> onDisk(kBytes, 0);
    {
        int in = ::open(path, O_RDONLY);
        ASSERT_GE(in, 0);
        EXPECT_EQ(::pread(in, onDisk.data(), kBytes, 0), static_cast<ssize_t>(kBytes));
        ::close(in);
    }
    EXPECT_TRUE(onDisk == payload) << "GpuToFile: the file does not hold the device bytes";
    DeviceBuffer target(*cuda, kBytes);
    target.upload(std::vector<char>(kBytes, 0));
    {
        std::vector<kvc::FileDesc> files;
        files.emplace_back(path, O_RDONLY, 0600, kBytes);
        agent->executeLoopbackRequest(MemoryDescs{MemoryType::kVRAM, {MemoryDesc{target.data(), kBytes, 0}}},
            kvc::FileDescs{std::move(files)}, false);
    }
    ::unlink(path);
    EXPECT_TRUE(target.download() == payload) << "FileToGpu: the device does not hold the file's bytes";
}

// A WRITE to an agent that has gone away fails (at submission or in wait), within bounds.
TEST(TransferAgent, DeadPeerIsAnError)
{
    AgentPair pair;
    std::vector<char> mem0(4096, 10);
    std::vector<char> mem1(4096, 1);
    Registered reg0(*pair.agent0, hostDescs(mem0));
    auto reg1 = std::make_unique<Registered>(*pair.agent1, hostDescs(mem1));
    MemoryDescs remote = reg1->descs();
    ASSERT_NO_FATAL_FAILURE(pair.connect(remote));
    reg1.reset();
    pair.agent1.reset();
    auto start = std::chrono::steady_clock::now();
    bool failed = false;
    // The loss may take the transport a moment to notice: keep writing until it does.
    while (!failed && std::chrono::steady_clock::now() - start < kWaitLimit)
    {
        try
        {
            auto status = pair.agent0->submitTransferRequests(
                TransferRequest{TransferOp::kWRITE, reg0.descs(), remote, pair.name1});
            failed = waitFor(*status, 5000) == TransferState::kFAILURE;
            if (failed && kStatusExplainsFailure)
            {
                // The failure names the peer and its status, with the transfer's facts.
                std::string text = statusText(*status);
                EXPECT_NE(text.find("peer " + pair.name1), std::string::npos) << text;
                EXPECT_NE(text.find("KVX_ERR_"), std::string::npos) << text;
                EXPECT_NE(text.find("4096 bytes"), std::string::npos) << text;
            }
        }
        catch (std::exception const&)
        {
            failed = true;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    EXPECT_TRUE(failed) << "writes to a destroyed agent kept succeeding";
}

#if KVXFER_TRTLLM_LINE >= 103 // TransferStatus::release() from 1.3 on
namespace
{

// A transfer agent in another process (trtllm_peer agent-target) that
// reaches us over TCP only, so a 64 MiB write takes long enough to catch running.
class TargetProcess
{
public:
    TargetProcess(size_t bytes, uint32_t seed)
    {
        int out[2];
        if (::pipe(out) != 0)
            throw std::runtime_error("pipe failed");
        posix_spawn_file_actions_t actions;
        posix_spawn_file_actions_init(&actions);
        posix_spawn_file_actions_adddup2(&actions, out[1], STDOUT_FILENO);
        posix_spawn_file_actions_addclose(&actions, out[0]);
        std::vector<std::string> env;
        for (char** e = environ; *e != nullptr; ++e)
            if (std::strncmp(*e, "UCX_TLS=", 8) != 0)
                env.emplace_back(*e);
        env.emplace_back("UCX_TLS=tcp");
        std::vector<char*> envp;
        for (auto& e : env)
            envp.push_back(e.data());
        envp.push_back(nullptr);
        std::string size = std::to_string(bytes);
        std::string seedText = std::to_string(seed);
        char mode[] = "agent-target";
        char* argv[] = {const_cast<char*>(TRTLLM_PEER_PROGRAM), mode, size.data(), seedText.data(), nullptr};
        int rc = ::posix_spawn(&mPid, TRTLLM_PEER_PROGRAM, &actions, nullptr, argv, envp.data());
        posix_spawn_file_actions_destroy(&actions);
        ::close(out[1]);
        if (rc != 0)
        {
            ::close(out[0]);
            throw std::runtime_error(std::string("posix_spawn: ") + std::strerror(rc));
        }
        std::string line = readAnnouncement(out[0]);
        ::close(out[0]);
        char name[256] = {};
        char info[256] = {};
        unsigned long long addr = 0;
        if (std::sscanf(line.c_str(), "%255s %255s %llu", name, info, &addr) != 3)
            throw std::runtime_error("the target process said '" + line + "'");
        mName = name;
        mInfo = info;
        mAddr = static_cast<uintptr_t>(addr);
    }

    ~TargetProcess()
    {
        if (mPid > 0)
        {
            ::kill(mPid, SIGKILL);
            ::waitpid(mPid, nullptr, 0);
        }
    }

    TargetProcess(TargetProcess const&) = delete;
    TargetProcess& operator=(TargetProcess const&) = delete;

    // The target's exit status (0: it verified the data), waiting at most kWaitLimit.
    int exitStatus()
    {
        auto deadline = std::chrono::steady_clock::now() + kWaitLimit;
        int status = 0;
        while (::waitpid(mPid, &status, WNOHANG) == 0)
        {
            if (std::chrono::steady_clock::now() > deadline)
                return -1;
            std::this_thread::sleep_for(std::chrono::milliseconds(5));
        }
        mPid = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : -2;
    }

    std::string mName;
    std::string mInfo;
    uintptr_t mAddr = 0;

private:
    pid_t mPid = -1;
};

} // namespace

// TensorRT-LLM's in-flight cancel: wait(short) finds the transfer running,
// release() must be true and the transfer must end failed; the same peer then
// receives a correct transfer, which the peer process verifies itself.
TEST(TransferAgent, CancelMidSend)
{
    constexpr size_t kBytes = 64 << 20;
    constexpr uint32_t kSeed = 7;
    TargetProcess target(kBytes, kSeed);
    auto agent = makeTransferAgent(uniqueName("canceller"));
    MemoryDescs remote{MemoryType::kDRAM, {MemoryDesc{target.mAddr, kBytes, 0}}};
    loadByConnectionInfo(*agent, target.mName, target.mInfo);
    ASSERT_NO_FATAL_FAILURE(waitRemoteDescs(*agent, target.mName, remote));
    bool canceledOne = false;
    std::string cancelled;
    {
        std::vector<char> junk(kBytes, 3);
        Registered reg(*agent, hostDescs(junk));
        for (int attempt = 0; attempt < 5 && !canceledOne; ++attempt)
        {
            auto status =
                agent->submitTransferRequests(TransferRequest{TransferOp::kWRITE, reg.descs(), remote, target.mName});
            if (waitFor(*status, 1) != TransferState::kIN_PROGRESS)
            {
                ASSERT_EQ(waitFor(*status), TransferState::kSUCCESS) << statusText(*status);
                continue;
            }
            ASSERT_TRUE(status->release()) << statusText(*status);
            EXPECT_EQ(waitFor(*status, 0), TransferState::kFAILURE);
            EXPECT_FALSE(status->isCompleted());
            canceledOne = true;
            cancelled = statusText(*status);
            if (kStatusExplainsFailure)
            {
                EXPECT_NE(cancelled.find("canceled by release()"), std::string::npos) << cancelled;
            }
        }
        ASSERT_TRUE(canceledOne) << "no 64 MiB write over TCP was still running after 1 ms";
    } // released: the memory may go now
    auto payload = bulkBytes(kBytes, kSeed);
    Registered reg(*agent, hostDescs(payload));
    auto status = agent->submitTransferRequests(
        TransferRequest{TransferOp::kWRITE, reg.descs(), remote, target.mName, std::string("verify")});
    ASSERT_EQ(waitFor(*status), TransferState::kSUCCESS) << statusText(*status) << " after: " << cancelled;
    EXPECT_EQ(target.exitStatus(), 0) << "the target did not receive the transfer after the cancel: " << cancelled;
    agent->invalidateRemoteAgent(target.mName);
}
#endif

// TRTLLM_USE_MOONCAKE_KVCACHE=1 alone selects Mooncake in TensorRT-LLM:
// kvxfer refuses at once, naming it, instead of serving another transport.
TEST(TransferAgent, MooncakeIsRefusedClearly)
{
    ScopedEnv noUcx("TRTLLM_USE_UCX_KVCACHE", nullptr);
    ScopedEnv noNixl("TRTLLM_USE_NIXL_KVCACHE", nullptr);
    ScopedEnv mooncake("TRTLLM_USE_MOONCAKE_KVCACHE", "1");
    try
    {
        auto agent = makeTransferAgent(uniqueName("mooncake"));
        FAIL() << "an agent was made although Mooncake was selected";
    }
    catch (std::exception const& e)
    {
        std::string what = e.what();
        EXPECT_NE(what.find("TRTLLM_USE_MOONCAKE_KVCACHE=1"), std::string::npos) << what;
        EXPECT_NE(what.find("does not serve"), std::string::npos) << what;
    }
}

// TRTLLM_NIXL_PORT = P: this process's k-th listening agent (rank 0 of 1)
// listens on P + k, as TensorRT-LLM's NIXL agents do.
TEST(TransferAgent, ListenPortFollowsTrtllmNixlPort)
{
    // A free port with the next one free too. Tests running at the same time may
    // take either between the probe and the listen: then another try. Every agent
    // made under TRTLLM_NIXL_PORT counts, failed ones too, so after `made` agents
    // the next listens on P + made: P is set so that it lands on the probed port.
    int made = 0;
    int expectedFirst = 0;
    std::unique_ptr<kvc::BaseTransferAgent> first;
    std::unique_ptr<kvc::BaseTransferAgent> second;
    for (int attempt = 0; attempt < 20 && second == nullptr; ++attempt)
    {
        uint16_t candidate = 0;
        int probe = loopbackSocket(candidate, 0);
        if (probe >= 0)
            ::close(probe);
        if (candidate <= made || candidate >= 65000 || !portIsFree(candidate + 1))
            continue;
        expectedFirst = candidate;
        ScopedEnv port("TRTLLM_NIXL_PORT", std::to_string(candidate - made).c_str());
        try
        {
            ++made;
            first = makeTransferAgent(uniqueName("port0"));
            ++made;
            second = makeTransferAgent(uniqueName("port1"));
        }
        catch (std::exception const& e)
        {
            if (std::string(e.what()).find("Address already in use") == std::string::npos)
                throw;
            first.reset();
            second.reset();
        }
    }
    ASSERT_NE(second, nullptr) << "no free pair of ports in 20 tries";
    auto endsWithPort = [](std::string const& info, int p)
    {
        std::string suffix = ":" + std::to_string(p);
        return info.size() > suffix.size() && info.compare(info.size() - suffix.size(), suffix.size(), suffix) == 0;
    };
    EXPECT_TRUE(endsWithPort(localConnectionInfo(*first), expectedFirst)) << localConnectionInfo(*first);
    EXPECT_TRUE(endsWithPort(localConnectionInfo(*second), expectedFirst + 1)) << localConnectionInfo(*second);
}
