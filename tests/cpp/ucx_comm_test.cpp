// UCX connection-manager contract tests, mirroring TensorRT-LLM's
// cpp/tests/unit_tests/executor/ucxCommTest.cpp scenarios (Basic, multiSend,
// CommCache) plus fan-in / fan-out. All managers listen on 127.0.0.1.
#include "kvx_test_util.hpp"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <set>

using namespace kvxtest;

namespace
{

constexpr uint32_t kIdTag = 19;
constexpr uint32_t kDataTag = 0x74;
constexpr size_t kDataSize = 1024;

void make_cm(CmPtr* out)
{
    kvx_cm_config cfg;
    KVX_ASSERT_OK(kvx_cm_config_init(&cfg));
    cfg.backend = KVX_BACKEND_AUTO;
    cfg.listen_ip = "127.0.0.1";
    cfg.timeout_ms = kTimeoutMs;
    kvx_cm* cm = nullptr;
    KVX_ASSERT_OK(kvx_cm_create(&cfg, &cm));
    ASSERT_NE(cm, nullptr);
    out->reset(cm);
    uint32_t backend = 0;
    KVX_ASSERT_OK(kvx_cm_backend(cm, &backend));
    ASSERT_EQ(backend, kvxtest::backend_under_test());
    bool running = false;
    KVX_ASSERT_OK(kvx_cm_is_running(cm, &running));
    ASSERT_TRUE(running);
}

std::string address_of(const kvx_cm* cm)
{
    Bytes b;
    kvx_status st = kvx_cm_get_local_address(cm, b.out());
    EXPECT_EQ(st, KVX_OK) << describe(st);
    return b.str();
}

void connect(kvx_cm* cm, const std::string& addr, const kvx_conn** out)
{
    const char* a = addr.c_str();
    *out = nullptr;
    KVX_ASSERT_OK(kvx_cm_get_connections(cm, &a, 1, kTimeoutMs, out));
    ASSERT_NE(*out, nullptr);
}

void send_id(const kvx_conn* c, uint64_t id)
{
    KVX_ASSERT_OK(kvx_conn_send(c, kIdTag, &id, sizeof id, kTimeoutMs));
}

void recv_connect_id(kvx_cm* cm, const kvx_conn** peer, uint64_t* id)
{
    *id = 0;
    *peer = nullptr;
    KVX_ASSERT_OK(kvx_cm_recv_connect(cm, kIdTag, id, sizeof *id, kTimeoutMs, peer));
    ASSERT_NE(*peer, nullptr);
}

void send_data(const kvx_conn* c, const std::vector<uint8_t>& data)
{
    KVX_ASSERT_OK(kvx_conn_send(c, kDataTag, data.data(), data.size(), kTimeoutMs));
}

void expect_data(const kvx_conn* c, const std::vector<uint8_t>& want)
{
    std::vector<uint8_t> got(want.size(), 0);
    KVX_ASSERT_OK(kvx_conn_recv(c, kDataTag, got.data(), got.size(), kTimeoutMs));
    EXPECT_EQ(got, want);
}

} // namespace

TEST(UcxComm, Basic)
{
    CmPtr m1, m2;
    ASSERT_NO_FATAL_FAILURE(make_cm(&m1));
    ASSERT_NO_FATAL_FAILURE(make_cm(&m2));
    std::string a1 = address_of(m1.get());
    std::string a2 = address_of(m2.get());
    ASSERT_FALSE(a1.empty());
    EXPECT_NE(a1, a2);

    const kvx_conn* to1 = nullptr;
    ASSERT_NO_FATAL_FAILURE(connect(m2.get(), a1, &to1));
    Bytes peer_addr;
    KVX_EXPECT_OK(kvx_conn_peer_address(to1, peer_addr.out()));
    EXPECT_EQ(peer_addr.str(), a1);

    const uint64_t id = 0x1122334455667788ull;
    ASSERT_NO_FATAL_FAILURE(send_id(to1, id));
    const kvx_conn* from2 = nullptr;
    uint64_t got_id = 0;
    ASSERT_NO_FATAL_FAILURE(recv_connect_id(m1.get(), &from2, &got_id));
    EXPECT_EQ(got_id, id);
    Bytes back_addr;
    KVX_EXPECT_OK(kvx_conn_peer_address(from2, back_addr.out()));
    EXPECT_EQ(back_addr.str(), a2);

    auto d12 = random_bytes(kDataSize, 1);
    auto d21 = random_bytes(kDataSize, 2);
    ASSERT_NO_FATAL_FAILURE(send_data(to1, d21));
    ASSERT_NO_FATAL_FAILURE(expect_data(from2, d21));
    ASSERT_NO_FATAL_FAILURE(send_data(from2, d12));
    ASSERT_NO_FATAL_FAILURE(expect_data(to1, d12));
}

TEST(UcxComm, MultiSend)
{
    CmPtr mRecv, m1, m2;
    ASSERT_NO_FATAL_FAILURE(make_cm(&mRecv));
    ASSERT_NO_FATAL_FAILURE(make_cm(&m1));
    ASSERT_NO_FATAL_FAILURE(make_cm(&m2));
    std::string a1 = address_of(m1.get()), a2 = address_of(m2.get());
    const char* addrs[2] = {a1.c_str(), a2.c_str()};
    const kvx_conn* conns[2] = {nullptr, nullptr};
    KVX_ASSERT_OK(kvx_cm_get_connections(mRecv.get(), addrs, 2, kTimeoutMs, conns));
    ASSERT_NE(conns[0], nullptr);
    ASSERT_NE(conns[1], nullptr);
    ASSERT_NE(conns[0], conns[1]);
    ASSERT_NO_FATAL_FAILURE(send_id(conns[0], 1));
    ASSERT_NO_FATAL_FAILURE(send_id(conns[1], 2));

    const kvx_conn *p1 = nullptr, *p2 = nullptr;
    uint64_t id1 = 0, id2 = 0;
    ASSERT_NO_FATAL_FAILURE(recv_connect_id(m1.get(), &p1, &id1));
    ASSERT_NO_FATAL_FAILURE(recv_connect_id(m2.get(), &p2, &id2));
    EXPECT_EQ(id1, 1u);
    EXPECT_EQ(id2, 2u);

    // Same tag from both peers; each connection must receive only its own peer's data.
    auto from1 = random_bytes(kDataSize, 11);
    auto from2 = random_bytes(kDataSize, 22);
    ASSERT_NO_FATAL_FAILURE(send_data(p1, from1));
    ASSERT_NO_FATAL_FAILURE(send_data(p2, from2));
    ASSERT_NO_FATAL_FAILURE(expect_data(conns[1], from2));
    ASSERT_NO_FATAL_FAILURE(expect_data(conns[0], from1));
}

TEST(UcxComm, CommCache)
{
    CmPtr m1, m2;
    ASSERT_NO_FATAL_FAILURE(make_cm(&m1));
    ASSERT_NO_FATAL_FAILURE(make_cm(&m2));
    std::string a1 = address_of(m1.get());
    const kvx_conn *c1 = nullptr, *c2 = nullptr;
    ASSERT_NO_FATAL_FAILURE(connect(m2.get(), a1, &c1));
    ASSERT_NO_FATAL_FAILURE(connect(m2.get(), a1, &c2));
    EXPECT_EQ(c1, c2) << "second get_connections for the same address made a new connection";

    ASSERT_NO_FATAL_FAILURE(send_id(c1, 7));
    const kvx_conn *p1 = nullptr, *p2 = nullptr;
    uint64_t id = 0;
    ASSERT_NO_FATAL_FAILURE(recv_connect_id(m1.get(), &p1, &id));
    EXPECT_EQ(id, 7u);
    ASSERT_NO_FATAL_FAILURE(send_id(c2, 8));
    ASSERT_NO_FATAL_FAILURE(recv_connect_id(m1.get(), &p2, &id));
    EXPECT_EQ(id, 8u);
    EXPECT_EQ(p1, p2) << "second id from the same peer came on a different connection";

    // Same address twice in one call gives the same pointer twice.
    const char* addrs[2] = {a1.c_str(), a1.c_str()};
    const kvx_conn* both[2] = {nullptr, nullptr};
    KVX_EXPECT_OK(kvx_cm_get_connections(m2.get(), addrs, 2, kTimeoutMs, both));
    EXPECT_EQ(both[0], c1);
    EXPECT_EQ(both[1], c1);
}

TEST(UcxComm, RecvConnectTimeoutAndSizeMismatch)
{
    CmPtr m1, m2;
    ASSERT_NO_FATAL_FAILURE(make_cm(&m1));
    ASSERT_NO_FATAL_FAILURE(make_cm(&m2));
    uint64_t id = 0;
    const kvx_conn* peer = nullptr;
    KVX_EXPECT_ERR(kvx_cm_recv_connect(m1.get(), kIdTag, &id, sizeof id, 100, &peer), KVX_ERR_TIMEOUT);
    const kvx_conn* c = nullptr;
    ASSERT_NO_FATAL_FAILURE(connect(m2.get(), address_of(m1.get()), &c));
    uint32_t small = 5;
    KVX_ASSERT_OK(kvx_conn_send(c, kIdTag, &small, sizeof small, kTimeoutMs));
    KVX_EXPECT_ERR(kvx_cm_recv_connect(m1.get(), kIdTag, &id, sizeof id, kTimeoutMs, &peer), KVX_ERR_SIZE_MISMATCH);
}

TEST(UcxComm, ShutdownCancels)
{
    CmPtr m1;
    ASSERT_NO_FATAL_FAILURE(make_cm(&m1));
    std::atomic<int> st{KVX_OK};
    std::string waiter_error;
    auto started = std::chrono::steady_clock::now();
    std::thread waiter(
        [&]
        {
            uint64_t id = 0;
            const kvx_conn* peer = nullptr;
            st = kvx_cm_recv_connect(m1.get(), kIdTag, &id, sizeof id, kTimeoutMs, &peer);
            waiter_error = kvx_last_error(); // per thread: read it here
        });
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    KVX_EXPECT_OK(kvx_cm_shutdown(m1.get()));
    waiter.join();
    auto waited_ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - started).count();
    EXPECT_EQ(st.load(), KVX_ERR_CANCELED) << "blocked recv_connect returned " << kvx_status_str(st.load()) << " after "
                                           << waited_ms << " ms: " << waiter_error;
    bool running = true;
    KVX_EXPECT_OK(kvx_cm_is_running(m1.get(), &running));
    EXPECT_FALSE(running);
    // Later calls fail with CANCELED too.
    uint64_t id = 0;
    const kvx_conn* peer = nullptr;
    KVX_EXPECT_ERR(kvx_cm_recv_connect(m1.get(), kIdTag, &id, sizeof id, 100, &peer), KVX_ERR_CANCELED);
}

TEST(UcxComm, FanIn)
{
    constexpr int kSenders = 8;
    CmPtr recv;
    ASSERT_NO_FATAL_FAILURE(make_cm(&recv));
    const std::string addr = address_of(recv.get());
    std::vector<CmPtr> senders(kSenders);
    for (auto& s : senders)
        ASSERT_NO_FATAL_FAILURE(make_cm(&s));

    std::atomic<int> sent_ok{0}, replies_ok{0};
    std::vector<std::thread> threads;
    for (int i = 0; i < kSenders; ++i)
    {
        threads.emplace_back(
            [&, i]
            {
                const char* a = addr.c_str();
                const kvx_conn* c = nullptr;
                kvx_status st = kvx_cm_get_connections(senders[i].get(), &a, 1, kTimeoutMs, &c);
                if (st != KVX_OK)
                {
                    ADD_FAILURE() << "sender " << i << " get_connections: " << describe(st);
                    return;
                }
                uint64_t id = 1000 + i;
                st = kvx_conn_send(c, kIdTag, &id, sizeof id, kTimeoutMs);
                if (st != KVX_OK)
                {
                    ADD_FAILURE() << "sender " << i << " send: " << describe(st);
                    return;
                }
                ++sent_ok;
                std::vector<uint8_t> got(kDataSize);
                st = kvx_conn_recv(c, kDataTag, got.data(), got.size(), kTimeoutMs);
                if (st != KVX_OK)
                {
                    ADD_FAILURE() << "sender " << i << " recv reply: " << describe(st);
                    return;
                }
                if (got == random_bytes(kDataSize, 500 + i))
                    ++replies_ok;
                else
                    ADD_FAILURE() << "sender " << i << " got the wrong reply";
            });
    }
    std::set<uint64_t> ids;
    std::set<const kvx_conn*> peers;
    for (int i = 0; i < kSenders; ++i)
    {
        const kvx_conn* peer = nullptr;
        uint64_t id = 0;
        kvx_status st = kvx_cm_recv_connect(recv.get(), kIdTag, &id, sizeof id, kTimeoutMs, &peer);
        EXPECT_EQ(st, KVX_OK) << "recv_connect #" << i << ": " << describe(st);
        if (st != KVX_OK)
            break;
        ids.insert(id);
        peers.insert(peer);
        if (id < 1000u || id >= 1000u + kSenders)
        {
            ADD_FAILURE() << "unexpected id " << id;
            break;
        }
        kvx_status rs = kvx_conn_send(peer, kDataTag,
            random_bytes(kDataSize, 500 + static_cast<uint32_t>(id - 1000)).data(), kDataSize, kTimeoutMs);
        EXPECT_EQ(rs, KVX_OK) << "reply to " << id << ": " << describe(rs);
    }
    for (auto& t : threads)
        t.join();
    EXPECT_EQ(ids.size(), static_cast<size_t>(kSenders));
    EXPECT_EQ(peers.size(), static_cast<size_t>(kSenders)) << "distinct senders must map to distinct connections";
    EXPECT_EQ(sent_ok.load(), kSenders);
    EXPECT_EQ(replies_ok.load(), kSenders);
}

TEST(UcxComm, FanOut)
{
    constexpr int kReceivers = 8;
    CmPtr sender;
    ASSERT_NO_FATAL_FAILURE(make_cm(&sender));
    std::vector<CmPtr> receivers(kReceivers);
    std::vector<std::string> addrs;
    for (auto& r : receivers)
    {
        ASSERT_NO_FATAL_FAILURE(make_cm(&r));
        addrs.push_back(address_of(r.get()));
    }
    std::atomic<int> ok{0};
    std::vector<std::thread> threads;
    for (int i = 0; i < kReceivers; ++i)
    {
        threads.emplace_back(
            [&, i]
            {
                const kvx_conn* peer = nullptr;
                uint64_t id = 0;
                kvx_status st = kvx_cm_recv_connect(receivers[i].get(), kIdTag, &id, sizeof id, kTimeoutMs, &peer);
                if (st != KVX_OK)
                {
                    ADD_FAILURE() << "receiver " << i << " recv_connect: " << describe(st);
                    return;
                }
                if (id != static_cast<uint64_t>(i))
                {
                    ADD_FAILURE() << "receiver " << i << " got id " << id;
                    return;
                }
                std::vector<uint8_t> got(kDataSize);
                st = kvx_conn_recv(peer, kDataTag, got.data(), got.size(), kTimeoutMs);
                if (st != KVX_OK)
                {
                    ADD_FAILURE() << "receiver " << i << " recv data: " << describe(st);
                    return;
                }
                if (got != random_bytes(kDataSize, 900 + i))
                {
                    ADD_FAILURE() << "receiver " << i << " got the wrong data";
                    return;
                }
                auto reply = random_bytes(kDataSize, 700 + i);
                st = kvx_conn_send(peer, kDataTag, reply.data(), reply.size(), kTimeoutMs);
                if (st != KVX_OK)
                {
                    ADD_FAILURE() << "receiver " << i << " reply: " << describe(st);
                    return;
                }
                ++ok;
            });
    }
    std::vector<const char*> ptrs;
    for (auto& a : addrs)
        ptrs.push_back(a.c_str());
    std::vector<const kvx_conn*> conns(kReceivers, nullptr);
    kvx_status st = kvx_cm_get_connections(sender.get(), ptrs.data(), ptrs.size(), kTimeoutMs, conns.data());
    EXPECT_EQ(st, KVX_OK) << describe(st);
    if (st == KVX_OK)
    {
        for (int i = 0; i < kReceivers; ++i)
        {
            EXPECT_NE(conns[i], nullptr);
            if (!conns[i])
                continue;
            uint64_t id = i;
            KVX_EXPECT_OK(kvx_conn_send(conns[i], kIdTag, &id, sizeof id, kTimeoutMs));
            auto data = random_bytes(kDataSize, 900 + i);
            KVX_EXPECT_OK(kvx_conn_send(conns[i], kDataTag, data.data(), data.size(), kTimeoutMs));
        }
        for (int i = 0; i < kReceivers; ++i)
        {
            if (!conns[i])
                continue;
            std::vector<uint8_t> got(kDataSize);
            KVX_EXPECT_OK(kvx_conn_recv(conns[i], kDataTag, got.data(), got.size(), kTimeoutMs));
            EXPECT_EQ(got, random_bytes(kDataSize, 700 + i)) << "reply from receiver " << i;
        }
    }
    for (auto& t : threads)
        t.join();
    EXPECT_EQ(ok.load(), kReceivers);
    std::set<const kvx_conn*> distinct(conns.begin(), conns.end());
    EXPECT_EQ(distinct.size(), static_cast<size_t>(kReceivers));
}

TEST(UcxComm, LargeMessage)
{
    // 8 MiB: beyond UCX's eager threshold, so the rendezvous path is used.
    // The receive is posted from another thread since a rendezvous send may
    // need the matching receive to complete.
    CmPtr m1, m2;
    ASSERT_NO_FATAL_FAILURE(make_cm(&m1));
    ASSERT_NO_FATAL_FAILURE(make_cm(&m2));
    const kvx_conn* c = nullptr;
    ASSERT_NO_FATAL_FAILURE(connect(m2.get(), address_of(m1.get()), &c));
    ASSERT_NO_FATAL_FAILURE(send_id(c, 3));
    const kvx_conn* peer = nullptr;
    uint64_t id = 0;
    ASSERT_NO_FATAL_FAILURE(recv_connect_id(m1.get(), &peer, &id));
    auto big = random_bytes(8 << 20, 77);
    std::vector<uint8_t> got(big.size(), 0);
    std::atomic<int> rst{KVX_OK};
    std::thread rx([&] { rst = kvx_conn_recv(peer, kDataTag, got.data(), got.size(), kTimeoutMs); });
    KVX_EXPECT_OK(kvx_conn_send(c, kDataTag, big.data(), big.size(), kTimeoutMs));
    rx.join();
    EXPECT_EQ(rst.load(), KVX_OK) << kvx_status_str(rst.load());
    EXPECT_TRUE(got == big);
}

// The two orders in which a message and its receive can meet. Deterministic
// versions of what Basic/MultiSend hit by timing: the message is either
// already waiting (UCX's unexpected queue) when the receive is posted, or the
// receive is posted first.
TEST(UcxComm, MessageArrivesBeforeReceive)
{
    CmPtr m1, m2;
    ASSERT_NO_FATAL_FAILURE(make_cm(&m1));
    ASSERT_NO_FATAL_FAILURE(make_cm(&m2));
    const kvx_conn* c = nullptr;
    ASSERT_NO_FATAL_FAILURE(connect(m2.get(), address_of(m1.get()), &c));
    ASSERT_NO_FATAL_FAILURE(send_id(c, 0xabcdef));
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    const kvx_conn* peer = nullptr;
    uint64_t id = 0;
    ASSERT_NO_FATAL_FAILURE(recv_connect_id(m1.get(), &peer, &id));
    EXPECT_EQ(id, 0xabcdefu);
    auto data = random_bytes(kDataSize, 5);
    ASSERT_NO_FATAL_FAILURE(send_data(c, data));
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    ASSERT_NO_FATAL_FAILURE(expect_data(peer, data));
}

TEST(UcxComm, ReceivePostedBeforeMessage)
{
    CmPtr m1, m2;
    ASSERT_NO_FATAL_FAILURE(make_cm(&m1));
    ASSERT_NO_FATAL_FAILURE(make_cm(&m2));
    const kvx_conn* c = nullptr;
    ASSERT_NO_FATAL_FAILURE(connect(m2.get(), address_of(m1.get()), &c));
    const kvx_conn* peer = nullptr;
    uint64_t id = 0;
    std::atomic<int> st{KVX_OK};
    std::thread rx([&] { st = kvx_cm_recv_connect(m1.get(), kIdTag, &id, sizeof id, kTimeoutMs, &peer); });
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    const uint64_t sent_id = 0x123456;
    KVX_EXPECT_OK(kvx_conn_send(c, kIdTag, &sent_id, sizeof sent_id, kTimeoutMs));
    rx.join();
    ASSERT_EQ(st.load(), KVX_OK) << kvx_status_str(st.load());
    EXPECT_EQ(id, 0x123456u);
    ASSERT_NE(peer, nullptr);
    auto data = random_bytes(kDataSize, 6);
    std::vector<uint8_t> got(kDataSize, 0);
    std::thread rx2([&] { st = kvx_conn_recv(peer, kDataTag, got.data(), got.size(), kTimeoutMs); });
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    ASSERT_NO_FATAL_FAILURE(send_data(c, data));
    rx2.join();
    EXPECT_EQ(st.load(), KVX_OK) << kvx_status_str(st.load());
    EXPECT_EQ(got, data);
}
