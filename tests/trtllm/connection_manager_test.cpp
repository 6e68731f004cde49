// TensorRT-LLM's connection-manager scenarios (cpp/tests/unit_tests/executor/
// ucxCommTest.cpp: Basic, multiSend, CommCache, 8-way fan-in and fan-out)
// against libtensorrt_llm_ucx_wrapper.so. Like upstream, several managers
// live in one single-rank process, so each factory call is a one-rank
// all-gather and every CommState holds one socket.
#include "trtllm_test_util.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include <future>
#include <set>

extern char** environ;

using namespace trtllm_test;

namespace
{

// TensorRT-LLM's transceiver tags and ids (dataTransceiver.h).
constexpr int kIdTag = 19;
constexpr int kHostTag = 0x74;
constexpr int kDeviceTag = 0x75;
constexpr uint64_t kRequestSend = 1;
constexpr size_t kPayload = 1024;

using Manager = std::unique_ptr<kvc::ConnectionManager>;

void expectSingleRankState(kvc::ConnectionManager const& manager)
{
    auto const& state = manager.getCommState();
    ASSERT_TRUE(state.isSocketState());
    ASSERT_EQ(state.getSocketState().size(), 1u);
    EXPECT_EQ(state.getSelfIdx(), 0);
    EXPECT_NE(state.getSocketState()[0].mPort, 0);
    EXPECT_FALSE(state.getSocketState()[0].mIp.empty());
}

Manager makeManager()
{
    Manager m = makeUcxConnectionManager();
#if KVXFER_TRTLLM_LINE >= 103 // isRunning from 1.3 on
    EXPECT_TRUE(m->isRunning());
#endif
    return m;
}

kvc::Connection const* connectTo(kvc::ConnectionManager& from, kvc::ConnectionManager const& to)
{
    auto conns = from.getConnections(to.getCommState());
    EXPECT_EQ(conns.size(), 1u);
    return conns.at(0);
}

// The requester announces itself with an id on kID_TAG; the responder learns the connection from recvConnect.
kvc::Connection const* handshake(kvc::Connection const* requester, kvc::ConnectionManager& responder, uint64_t id)
{
    requester->send(kvc::DataContext{kIdTag}, &id, sizeof id);
    uint64_t got = 0;
    auto const* peer = responder.recvConnect(kvc::DataContext{kIdTag}, &got, sizeof got);
    EXPECT_NE(peer, nullptr);
    EXPECT_EQ(got, id);
    return peer;
}

void sendHost(kvc::Connection const* c, int tag, std::vector<char> const& data)
{
    c->send(kvc::DataContext{tag}, data.data(), data.size());
}

std::vector<char> recvHost(kvc::Connection const* c, int tag, size_t size)
{
    std::vector<char> out(size, 0);
    c->recv(kvc::DataContext{tag}, out.data(), out.size());
    return out;
}

} // namespace

TEST(ConnectionManager, Basic)
{
    Manager m1 = makeManager();
    Manager m2 = makeManager();
    ASSERT_NO_FATAL_FAILURE(expectSingleRankState(*m1));
    ASSERT_NO_FATAL_FAILURE(expectSingleRankState(*m2));
    EXPECT_FALSE(m1->getCommState() == m2->getCommState());

    auto const* c = connectTo(*m2, *m1);
    EXPECT_TRUE(c->isThreadSafe());
    auto const* p = handshake(c, *m1, kRequestSend);
    ASSERT_NE(p, nullptr);

    auto host = randomBytes(kPayload, 1);
    sendHost(c, kHostTag, host);
    EXPECT_EQ(recvHost(p, kHostTag, kPayload), host);
    auto back = randomBytes(kPayload, 2);
    sendHost(p, kHostTag, back);
    EXPECT_EQ(recvHost(c, kHostTag, kPayload), back);
    // Tags do not cross: a later 0x74 message is received before an earlier 0x75 one.
    auto other = randomBytes(kPayload, 3);
    sendHost(c, kDeviceTag, other);
    sendHost(c, kHostTag, host);
    EXPECT_EQ(recvHost(p, kHostTag, kPayload), host);
    EXPECT_EQ(recvHost(p, kDeviceTag, kPayload), other);
}

// Basic's device half: a device buffer to a device buffer on its own tag.
TEST(ConnectionManager, DeviceMemory)
{
    Cuda* cuda = Cuda::get();
    if (cuda == nullptr)
        GTEST_SKIP() << "no CUDA driver or device";
    Manager m1 = makeManager();
    Manager m2 = makeManager();
    auto const* c = connectTo(*m2, *m1);
    auto const* p = handshake(c, *m1, kRequestSend);
    ASSERT_NE(p, nullptr);
    DeviceBuffer src(*cuda, kPayload);
    DeviceBuffer dst(*cuda, kPayload);
    auto device = randomBytes(kPayload, 4);
    src.upload(device);
    auto receiver = std::async(std::launch::async,
        [&]
        {
            cuda->bind();
            p->recv(kvc::DataContext{kDeviceTag}, dst.data(), kPayload);
        });
    c->send(kvc::DataContext{kDeviceTag}, src.data(), kPayload);
    receiver.get();
    EXPECT_EQ(dst.download(), device);
}

// The same tag from two peers: each connection receives only its own peer's
// message, whatever order the receives are posted in.
TEST(ConnectionManager, multiSend)
{
    Manager mRecv = makeManager();
    Manager m1 = makeManager();
    Manager m2 = makeManager();
    kvc::CommState both{
        std::vector<kvc::SocketState>{m1->getCommState().getSocketState()[0], m2->getCommState().getSocketState()[0]},
        0};
    auto conns = mRecv->getConnections(both);
    ASSERT_EQ(conns.size(), 2u);
    ASSERT_NE(conns[0], conns[1]);
    auto const* p1 = handshake(conns[0], *m1, 1);
    auto const* p2 = handshake(conns[1], *m2, 2);
    ASSERT_NE(p1, nullptr);
    ASSERT_NE(p2, nullptr);

    auto from1 = randomBytes(kPayload, 11);
    auto from2 = randomBytes(kPayload, 12);
    sendHost(p1, kHostTag, from1);
    sendHost(p2, kHostTag, from2);
    // Reverse order: m2's message first.
    EXPECT_EQ(recvHost(conns[1], kHostTag, kPayload), from2);
    EXPECT_EQ(recvHost(conns[0], kHostTag, kPayload), from1);
}

TEST(ConnectionManager, CommCache)
{
    Manager m1 = makeManager();
    Manager m2 = makeManager();
    auto const* first = connectTo(*m2, *m1);
    auto const* again = connectTo(*m2, *m1);
    EXPECT_EQ(first, again);
    auto const* peer = handshake(first, *m1, 1);
    auto const* peerAgain = handshake(again, *m1, 2);
    EXPECT_EQ(peer, peerAgain);
}

#if KVXFER_TRTLLM_LINE >= 103 // DataContext has its termination flag from 1.3 on
// recvConnect gives up with nullptr once the termination flag is set.
TEST(ConnectionManager, RecvConnectTerminates)
{
    Manager m = makeManager();
    std::atomic<bool> terminate{false};
    auto setter = std::async(std::launch::async,
        [&]
        {
            std::this_thread::sleep_for(std::chrono::milliseconds(200));
            terminate = true;
        });
    uint64_t id = 0;
    auto start = std::chrono::steady_clock::now();
    EXPECT_EQ(m->recvConnect(kvc::DataContext{kIdTag, terminate}, &id, sizeof id), nullptr);
    EXPECT_LT(std::chrono::steady_clock::now() - start, kWaitLimit);
    setter.get();
}
#endif

TEST(ConnectionManager, ErrorsAreExceptions)
{
    Manager m = makeManager();
    EXPECT_THROW((void)m->getConnections(kvc::CommState{std::vector<int32_t>{0, 1}, 0}), std::exception);
    EXPECT_THROW(
        (void)m->getConnections(kvc::CommState{std::vector<kvc::SocketState>{{80, "not an ip"}}, 0}), std::exception);
}

// TensorRT-LLM's newest fan-in / fan-out tests: 5 s handshake and control
// bounds (payload too, here), and a 20 s watchdog over the whole exchange.
namespace
{
void fanIn8();
void fanOut8();
} // namespace

#define KVX_NEWEST_UCX_BOUNDS()                                                                                        \
    ScopedEnv handshakeBound("TRTLLM_UCX_CONNECTION_HANDSHAKE_TIMEOUT_MS", "5000");                                    \
    ScopedEnv hostControlBound("TRTLLM_UCX_HOST_CONTROL_TIMEOUT_MS", "5000");                                          \
    ScopedEnv payloadBound("TRTLLM_UCX_PAYLOAD_TIMEOUT_MS", "5000")

// Eight requesters, one receiver (concurrentRequestersToOneReceiver).
TEST(ConnectionManager, FanIn8)
{
    KVX_NEWEST_UCX_BOUNDS();
    withWatchdog(std::chrono::seconds(20), "FanIn8", [] { fanIn8(); });
}

// One requester, eight receivers (concurrentRequesterToMultipleReceivers).
TEST(ConnectionManager, FanOut8)
{
    KVX_NEWEST_UCX_BOUNDS();
    withWatchdog(std::chrono::seconds(20), "FanOut8", [] { fanOut8(); });
}

namespace
{

void fanIn8()
{
    constexpr int kPeers = 8;
    Manager receiver = makeManager();
    std::vector<std::future<void>> requesters;
    for (int i = 0; i < kPeers; ++i)
        requesters.push_back(std::async(std::launch::async,
            [&, i]
            {
                Manager m = makeManager();
                auto const* c = connectTo(*m, *receiver);
                uint64_t id = static_cast<uint64_t>(i);
                c->send(kvc::DataContext{kIdTag}, &id, sizeof id);
                sendHost(c, kHostTag, randomBytes(kPayload, 100 + i));
                // Keep the manager alive until the receiver has read everything.
                char done = 0;
                c->recv(kvc::DataContext{kHostTag + 1}, &done, 1);
            }));
    std::set<uint64_t> seen;
    std::vector<kvc::Connection const*> peers;
    for (int n = 0; n < kPeers; ++n)
    {
        uint64_t id = 0;
        auto const* peer = receiver->recvConnect(kvc::DataContext{kIdTag}, &id, sizeof id);
        ASSERT_NE(peer, nullptr);
        ASSERT_LT(id, static_cast<uint64_t>(kPeers));
        EXPECT_TRUE(seen.insert(id).second) << "id " << id << " twice";
        EXPECT_EQ(recvHost(peer, kHostTag, kPayload), randomBytes(kPayload, 100 + static_cast<uint32_t>(id)));
        peers.push_back(peer);
    }
    EXPECT_EQ(std::set<kvc::Connection const*>(peers.begin(), peers.end()).size(), static_cast<size_t>(kPeers));
    char done = 1;
    for (auto const* peer : peers)
        peer->send(kvc::DataContext{kHostTag + 1}, &done, 1);
    for (auto& r : requesters)
        r.get();
}

void fanOut8()
{
    constexpr int kPeers = 8;
    std::vector<Manager> receivers;
    std::vector<kvc::SocketState> sockets;
    for (int i = 0; i < kPeers; ++i)
    {
        receivers.push_back(makeManager());
        sockets.push_back(receivers.back()->getCommState().getSocketState()[0]);
    }
    Manager requester = makeManager();
    auto conns = requester->getConnections(kvc::CommState{sockets, 0});
    ASSERT_EQ(conns.size(), static_cast<size_t>(kPeers));
    EXPECT_EQ(std::set<kvc::Connection const*>(conns.begin(), conns.end()).size(), static_cast<size_t>(kPeers));

    std::vector<std::future<void>> senders;
    for (int i = 0; i < kPeers; ++i)
        senders.push_back(std::async(std::launch::async,
            [&, i]
            {
                uint64_t id = static_cast<uint64_t>(i);
                conns[i]->send(kvc::DataContext{kIdTag}, &id, sizeof id);
                sendHost(conns[i], kHostTag, randomBytes(kPayload, 200 + i));
            }));
    std::vector<std::future<void>> readers;
    for (int i = 0; i < kPeers; ++i)
        readers.push_back(std::async(std::launch::async,
            [&, i]
            {
                uint64_t id = 0;
                auto const* peer = receivers[i]->recvConnect(kvc::DataContext{kIdTag}, &id, sizeof id);
                ASSERT_NE(peer, nullptr);
                EXPECT_EQ(id, static_cast<uint64_t>(i));
                EXPECT_EQ(recvHost(peer, kHostTag, kPayload), randomBytes(kPayload, 200 + i));
            }));
    for (auto& s : senders)
        s.get();
    for (auto& r : readers)
        r.get();
}

} // namespace

// TensorRT-LLM's receive tasks ask for connections from many threads at once:
// every caller gets the one connection per peer.
TEST(ConnectionManager, ConcurrentGetConnections)
{
    constexpr int kThreads = 8;
    Manager m1 = makeManager();
    Manager m2 = makeManager();
    std::vector<std::future<kvc::Connection const*>> callers;
    for (int i = 0; i < kThreads; ++i)
        callers.push_back(std::async(std::launch::async, [&] { return connectTo(*m2, *m1); }));
    std::set<kvc::Connection const*> distinct;
    for (auto& c : callers)
        distinct.insert(c.get());
    EXPECT_EQ(distinct.size(), 1u);
}

// A peer process that dies turns blocked and later calls into exceptions, not hangs.
TEST(ConnectionManager, DeadPeerIsAnError)
{
    // UCX reports the lost peer to a pending receive (keepalive, about a
    // second). kvxfer's NIXL connection manager learns of it only when it sends,
    // so there a pending receive ends at the manager's timeout: shorten it so
    // the bound below checks "fails, within its timeout" on NIXL too.
    char const* nixl = std::getenv("TRTLLM_USE_NIXL_KVCACHE");
    char const* ucx = std::getenv("TRTLLM_USE_UCX_KVCACHE");
    bool onNixl = nixl && std::string(nixl) == "1" && !(ucx && std::string(ucx) == "1");
    if (onNixl)
        ::setenv("KVX_TIMEOUT_MS", "4000", 1);
    int out[2];
    ASSERT_EQ(::pipe(out), 0);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, out[1], STDOUT_FILENO);
    posix_spawn_file_actions_addclose(&actions, out[0]);
    char mode[] = "die-after-id";
    char* argv[] = {const_cast<char*>(TRTLLM_PEER_PROGRAM), mode, nullptr};
    pid_t pid = 0;
    ASSERT_EQ(::posix_spawn(&pid, TRTLLM_PEER_PROGRAM, &actions, nullptr, argv, environ), 0);
    posix_spawn_file_actions_destroy(&actions);
    ::close(out[1]);
    std::string line = readAnnouncement(out[0]);
    ::close(out[0]);
    char ip[256] = {};
    unsigned port = 0;
    ASSERT_EQ(std::sscanf(line.c_str(), "%255s %u", ip, &port), 2) << "the peer said '" << line << "'";

    Manager m = makeManager();
    auto conns = m->getConnections(kvc::CommState{std::vector<kvc::SocketState>{{static_cast<uint16_t>(port), ip}}, 0});
    ASSERT_EQ(conns.size(), 1u);
    auto const* c = conns[0];
    auto start = std::chrono::steady_clock::now();
    auto receiver = std::async(std::launch::async,
        [&]
        {
            std::vector<char> buffer(kPayload);
            c->recv(kvc::DataContext{kHostTag}, buffer.data(), buffer.size());
        });
    uint64_t id = kRequestSend;
    c->send(kvc::DataContext{kIdTag}, &id, sizeof id); // the peer exits on receipt
    int status = 0;
    ::waitpid(pid, &status, 0);
    EXPECT_THROW(receiver.get(), std::exception);
    EXPECT_LT(std::chrono::steady_clock::now() - start, kWaitLimit);
    auto data = randomBytes(kPayload, 9);
    EXPECT_THROW(sendHost(c, kHostTag, data), std::exception);
}

// TensorRT-LLM's UCX bounds by tag: TRTLLM_UCX_PAYLOAD_TIMEOUT_MS for data
// tags, TRTLLM_UCX_HOST_CONTROL_TIMEOUT_MS for its control tags (here the
// ready signal, 42). A receive nobody answers fails within its own bound.
TEST(ConnectionManager, PayloadAndHostControlBoundsFollowTheirVariables)
{
    ScopedEnv payloadBound("TRTLLM_UCX_PAYLOAD_TIMEOUT_MS", "300");
    ScopedEnv hostControlBound("TRTLLM_UCX_HOST_CONTROL_TIMEOUT_MS", "1200");
    Manager a = makeManager();
    Manager b = makeManager();
    auto const* c = connectTo(*a, *b);
    ASSERT_NO_FATAL_FAILURE(handshake(c, *b, 5));
    auto timedRecv = [&](int tag)
    {
        auto start = std::chrono::steady_clock::now();
        EXPECT_THROW(recvHost(c, tag, kPayload), std::exception) << "tag " << tag;
        return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start);
    };
    auto payload = timedRecv(kHostTag);
    EXPECT_GE(payload.count(), 250);
    EXPECT_LT(payload.count(), 1100) << "a payload receive must end at TRTLLM_UCX_PAYLOAD_TIMEOUT_MS";
    auto control = timedRecv(42);
    EXPECT_GE(control.count(), 1100) << "a control receive must wait TRTLLM_UCX_HOST_CONTROL_TIMEOUT_MS";
    EXPECT_LT(control.count(), 5000);
}

// TRTLLM_UCX_CONNECTION_HANDSHAKE_TIMEOUT_MS bounds getConnections: a peer
// that accepts TCP but never answers fails the call within it.
TEST(ConnectionManager, HandshakeBoundFollowsItsVariable)
{
    ScopedEnv handshakeBound("TRTLLM_UCX_CONNECTION_HANDSHAKE_TIMEOUT_MS", "500");
    uint16_t port = 0;
    int silent = loopbackSocket(port, 8);
    ASSERT_GE(silent, 0);
    Manager m = makeManager();
    auto start = std::chrono::steady_clock::now();
    kvc::CommState state{std::vector<kvc::SocketState>{{port, "127.0.0.1"}}, 0};
    EXPECT_THROW(m->getConnections(state), std::exception);
    auto took = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start);
    ::close(silent);
    EXPECT_GE(took.count(), 400);
    EXPECT_LT(took.count(), 3000) << "getConnections must end at TRTLLM_UCX_CONNECTION_HANDSHAKE_TIMEOUT_MS";
}
