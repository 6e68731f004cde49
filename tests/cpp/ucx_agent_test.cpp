// UCX transfer-agent contract tests, mirroring TensorRT-LLM's
// cpp/tests/unit_tests/executor/transferAgentTest.cpp scenarios. Every agent
// lives in this process and listens on 127.0.0.1.
#include "kvx_test_util.hpp"

#include <algorithm>
#include <cstdio>
#include <cstring>

using namespace kvxtest;

namespace
{

class PrintUcxTls : public ::testing::Environment
{
public:
    void SetUp() override
    {
        const char* tls = std::getenv("UCX_TLS");
        std::printf("UCX_TLS=%s\n", tls ? tls : "(unset: UCX default)");
    }
};
const auto* const kPrintUcxTls = ::testing::AddGlobalTestEnvironment(new PrintUcxTls);

constexpr size_t kSize = 100;

void make_agent(const char* name, AgentPtr* out, bool listen = true)
{
    kvx_agent_config cfg;
    KVX_ASSERT_OK(kvx_agent_config_init(&cfg));
    cfg.name = name;
    cfg.backend = KVX_BACKEND_AUTO;
    cfg.use_listen_thread = listen;
    cfg.listen_ip = "127.0.0.1";
    cfg.timeout_ms = kTimeoutMs;
    kvx_agent* a = nullptr;
    KVX_ASSERT_OK(kvx_agent_create(&cfg, &a));
    ASSERT_NE(a, nullptr);
    out->reset(a);
    uint32_t backend = 0;
    KVX_ASSERT_OK(kvx_agent_backend(a, &backend));
    ASSERT_EQ(backend, kvxtest::backend_under_test());
}

std::string connection_info(kvx_agent* a)
{
    Bytes b;
    kvx_status st = kvx_agent_get_connection_info(a, b.out());
    EXPECT_EQ(st, KVX_OK) << describe(st);
    return b.str();
}

// Poll check_remote_descs until true (TensorRT-LLM's `do {...} while (!checked)`), bounded.
bool wait_remote_descs(kvx_agent* a, const char* name, const kvx_memory_desc* d, size_t n)
{
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(kTimeoutMs);
    do
    {
        bool ok = false;
        kvx_status st = kvx_agent_check_remote_descs(a, name, KVX_MEMORY_DRAM, d, n, &ok);
        if (st != KVX_OK)
        {
            ADD_FAILURE() << "kvx_agent_check_remote_descs -> " << describe(st);
            return false;
        }
        if (ok)
            return true;
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    } while (std::chrono::steady_clock::now() < deadline);
    return false;
}

kvx_transfer_request make_request(
    kvx_transfer_op op, const kvx_memory_desc* src, const kvx_memory_desc* dst, size_t count, const char* remote)
{
    kvx_transfer_request r;
    std::memset(&r, 0, sizeof r);
    r.op = op;
    r.src_type = KVX_MEMORY_DRAM;
    r.src_descs = src;
    r.dst_type = KVX_MEMORY_DRAM;
    r.dst_descs = dst;
    r.count = count;
    r.remote_name = remote;
    return r;
}

void submit(kvx_agent* a, const kvx_transfer_request& r, XferPtr* out)
{
    kvx_xfer* x = nullptr;
    KVX_ASSERT_OK(kvx_agent_submit(a, &r, &x));
    ASSERT_NE(x, nullptr);
    out->reset(x);
}

void wait_success(kvx_xfer* x)
{
    kvx_transfer_state state = KVX_TRANSFER_IN_PROGRESS;
    kvx_status st = kvx_xfer_wait(x, kTimeoutMs, &state);
    Bytes why;
    kvx_xfer_last_status(x, why.out());
    ASSERT_GE(st, 0) << "kvx_xfer_wait -> " << describe(st) << "; last_status: " << why.str();
    ASSERT_EQ(state, KVX_TRANSFER_SUCCESS)
        << "state " << state << "; last_status: " << why.str() << "; last_error: " << kvx_last_error();
    bool done = false;
    KVX_ASSERT_OK(kvx_xfer_is_completed(x, &done));
    EXPECT_TRUE(done);
}

// A pair of agents with one registered 100-byte DRAM buffer each, agent0 has loaded agent1.
class UcxAgentPair : public ::testing::Test
{
protected:
    void SetUp() override
    {
        for (size_t i = 0; i < kSize; ++i)
        {
            mem0_[i] = static_cast<uint8_t>(i + 1);
            mem1_[i] = 0;
        }
        ASSERT_NO_FATAL_FAILURE(make_agent("agent0", &agent0_));
        ASSERT_NO_FATAL_FAILURE(make_agent("agent1", &agent1_));
        d0_ = desc_of(mem0_.data(), kSize);
        d1_ = desc_of(mem1_.data(), kSize);
        KVX_ASSERT_OK(kvx_agent_register_memory(agent0_.get(), KVX_MEMORY_DRAM, &d0_, 1));
        KVX_ASSERT_OK(kvx_agent_register_memory(agent1_.get(), KVX_MEMORY_DRAM, &d1_, 1));
    }
    void Load(bool poll = true)
    {
        std::string info = connection_info(agent1_.get());
        ASSERT_FALSE(info.empty());
        KVX_ASSERT_OK(kvx_agent_load_remote_by_connection_info(agent0_.get(), "agent1", info.c_str(), kTimeoutMs));
        if (poll)
        {
            ASSERT_TRUE(wait_remote_descs(agent0_.get(), "agent1", &d1_, 1)) << "agent1's memory never became visible";
        }
    }
    std::vector<uint8_t> mem0_ = std::vector<uint8_t>(kSize), mem1_ = std::vector<uint8_t>(kSize);
    kvx_memory_desc d0_{}, d1_{};
    AgentPtr agent0_, agent1_;
};

} // namespace

TEST_F(UcxAgentPair, Basic)
{
    ASSERT_NO_FATAL_FAILURE(Load());
    XferPtr x;
    ASSERT_NO_FATAL_FAILURE(submit(agent0_.get(), make_request(KVX_OP_WRITE, &d0_, &d1_, 1, "agent1"), &x));
    ASSERT_NO_FATAL_FAILURE(wait_success(x.get()));
    EXPECT_EQ(mem0_, mem1_);
    KVX_EXPECT_OK(kvx_agent_invalidate_remote(agent0_.get(), "agent1"));
    bool ok = true;
    KVX_EXPECT_OK(kvx_agent_check_remote_descs(agent0_.get(), "agent1", KVX_MEMORY_DRAM, &d1_, 1, &ok));
    EXPECT_FALSE(ok) << "invalidated peer still reported as loaded";
}

TEST_F(UcxAgentPair, Basic2Read)
{
    // READ pulls remote (dst) into local (src): agent0's buffer takes agent1's contents.
    for (size_t i = 0; i < kSize; ++i)
        mem1_[i] = static_cast<uint8_t>(200 - i);
    std::fill(mem0_.begin(), mem0_.end(), 0);
    ASSERT_NO_FATAL_FAILURE(Load());
    XferPtr x;
    ASSERT_NO_FATAL_FAILURE(submit(agent0_.get(), make_request(KVX_OP_READ, &d0_, &d1_, 1, "agent1"), &x));
    ASSERT_NO_FATAL_FAILURE(wait_success(x.get()));
    EXPECT_EQ(mem0_, mem1_);
    KVX_EXPECT_OK(kvx_agent_invalidate_remote(agent0_.get(), "agent1"));
}

TEST_F(UcxAgentPair, LoadByDescriptorBytes)
{
    Bytes desc;
    KVX_ASSERT_OK(kvx_agent_get_local_desc(agent1_.get(), desc.out()));
    KVX_ASSERT_OK(kvx_agent_load_remote(agent0_.get(), "agent1", desc.b.data, desc.b.len));
    ASSERT_TRUE(wait_remote_descs(agent0_.get(), "agent1", &d1_, 1));
    XferPtr x;
    ASSERT_NO_FATAL_FAILURE(submit(agent0_.get(), make_request(KVX_OP_WRITE, &d0_, &d1_, 1, "agent1"), &x));
    ASSERT_NO_FATAL_FAILURE(wait_success(x.get()));
    EXPECT_EQ(mem0_, mem1_);
}

TEST(UcxAgent, Connect)
{
    // agent0 and agent2 register the same host buffer and both write into agent1.
    std::vector<uint8_t> mem0(kSize), mem1(kSize, 0);
    for (size_t i = 0; i < kSize; ++i)
        mem0[i] = static_cast<uint8_t>(3 * i + 1);
    AgentPtr a0, a1, a2;
    ASSERT_NO_FATAL_FAILURE(make_agent("agent0", &a0));
    ASSERT_NO_FATAL_FAILURE(make_agent("agent1", &a1));
    ASSERT_NO_FATAL_FAILURE(make_agent("agent2", &a2));
    kvx_memory_desc d0 = desc_of(mem0.data(), kSize), d1 = desc_of(mem1.data(), kSize);
    KVX_ASSERT_OK(kvx_agent_register_memory(a0.get(), KVX_MEMORY_DRAM, &d0, 1));
    KVX_ASSERT_OK(kvx_agent_register_memory(a2.get(), KVX_MEMORY_DRAM, &d0, 1));
    KVX_ASSERT_OK(kvx_agent_register_memory(a1.get(), KVX_MEMORY_DRAM, &d1, 1));
    std::string info = connection_info(a1.get());
    KVX_ASSERT_OK(kvx_agent_load_remote_by_connection_info(a0.get(), "agent1", info.c_str(), kTimeoutMs));
    KVX_ASSERT_OK(kvx_agent_load_remote_by_connection_info(a2.get(), "agent1", info.c_str(), kTimeoutMs));
    ASSERT_TRUE(wait_remote_descs(a0.get(), "agent1", &d1, 1));
    ASSERT_TRUE(wait_remote_descs(a2.get(), "agent1", &d1, 1));

    XferPtr x0;
    ASSERT_NO_FATAL_FAILURE(submit(a0.get(), make_request(KVX_OP_WRITE, &d0, &d1, 1, "agent1"), &x0));
    ASSERT_NO_FATAL_FAILURE(wait_success(x0.get()));
    EXPECT_EQ(mem0, mem1);

    std::fill(mem1.begin(), mem1.end(), 0);
    for (size_t i = 0; i < kSize; ++i)
        mem0[i] = static_cast<uint8_t>(255 - i);
    XferPtr x2;
    ASSERT_NO_FATAL_FAILURE(submit(a2.get(), make_request(KVX_OP_WRITE, &d0, &d1, 1, "agent1"), &x2));
    ASSERT_NO_FATAL_FAILURE(wait_success(x2.get()));
    EXPECT_EQ(mem0, mem1);

    KVX_EXPECT_OK(kvx_agent_invalidate_remote(a0.get(), "agent1"));
    KVX_EXPECT_OK(kvx_agent_invalidate_remote(a2.get(), "agent1"));
    KVX_EXPECT_OK(kvx_agent_deregister_memory(a0.get(), KVX_MEMORY_DRAM, &d0, 1));
    KVX_EXPECT_OK(kvx_agent_deregister_memory(a2.get(), KVX_MEMORY_DRAM, &d0, 1));
}

TEST_F(UcxAgentPair, SyncMessageSeparateNotify)
{
    ASSERT_NO_FATAL_FAILURE(Load());
    XferPtr x;
    ASSERT_NO_FATAL_FAILURE(submit(agent0_.get(), make_request(KVX_OP_WRITE, &d0_, &d1_, 1, "agent1"), &x));
    ASSERT_NO_FATAL_FAILURE(wait_success(x.get()));
    EXPECT_EQ(mem0_, mem1_);

    const std::string text = "agent0 finished writing";
    KVX_ASSERT_OK(
        kvx_agent_notify(agent0_.get(), "agent1", reinterpret_cast<const uint8_t*>(text.data()), text.size()));
    auto notes = wait_notifications(agent1_.get());
    ASSERT_EQ(notes.size(), 1u) << "expected exactly one notification";
    EXPECT_EQ(notes[0].sender, "agent0");
    EXPECT_EQ(std::string(notes[0].message.begin(), notes[0].message.end()), text);
    // Drained: nothing left, and agent0 received nothing.
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    EXPECT_TRUE(drain(agent1_.get()).empty());
    EXPECT_TRUE(drain(agent0_.get()).empty());
}

TEST_F(UcxAgentPair, SyncMessageWithWrite)
{
    ASSERT_NO_FATAL_FAILURE(Load());
    const std::string text = "sync after data";
    kvx_transfer_request r = make_request(KVX_OP_WRITE, &d0_, &d1_, 1, "agent1");
    r.sync_message = reinterpret_cast<const uint8_t*>(text.data());
    r.sync_message_len = text.size();
    r.has_sync_message = true;
    XferPtr x;
    ASSERT_NO_FATAL_FAILURE(submit(agent0_.get(), r, &x));
    // The receiver learns of completion only through the notification: once it
    // arrives the data must already be visible.
    auto notes = wait_notifications(agent1_.get());
    ASSERT_EQ(notes.size(), 1u);
    EXPECT_EQ(notes[0].sender, "agent0");
    EXPECT_EQ(std::string(notes[0].message.begin(), notes[0].message.end()), text);
    EXPECT_EQ(mem0_, mem1_) << "data not visible when the sync message arrived";
    ASSERT_NO_FATAL_FAILURE(wait_success(x.get()));
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    EXPECT_TRUE(drain(agent1_.get()).empty()) << "sync message delivered more than once";
}

TEST_F(UcxAgentPair, SyncMessageReverseDirection)
{
    // agent1 loads agent0 and writes back with a sync message (TensorRT-LLM's second half).
    ASSERT_NO_FATAL_FAILURE(Load());
    std::string info0 = connection_info(agent0_.get());
    KVX_ASSERT_OK(kvx_agent_load_remote_by_connection_info(agent1_.get(), "agent0", info0.c_str(), kTimeoutMs));
    ASSERT_TRUE(wait_remote_descs(agent1_.get(), "agent0", &d0_, 1));
    for (size_t i = 0; i < kSize; ++i)
        mem1_[i] = static_cast<uint8_t>(i ^ 0x5a);
    const std::string text = "agent1 -> agent0";
    kvx_transfer_request r = make_request(KVX_OP_WRITE, &d1_, &d0_, 1, "agent0");
    r.sync_message = reinterpret_cast<const uint8_t*>(text.data());
    r.sync_message_len = text.size();
    r.has_sync_message = true;
    XferPtr x;
    ASSERT_NO_FATAL_FAILURE(submit(agent1_.get(), r, &x));
    auto notes = wait_notifications(agent0_.get());
    ASSERT_EQ(notes.size(), 1u);
    EXPECT_EQ(notes[0].sender, "agent1");
    EXPECT_EQ(std::string(notes[0].message.begin(), notes[0].message.end()), text);
    EXPECT_EQ(mem0_, mem1_);
    ASSERT_NO_FATAL_FAILURE(wait_success(x.get()));
}

TEST_F(UcxAgentPair, SyncMessageBinaryPayload)
{
    ASSERT_NO_FATAL_FAILURE(Load());
    std::vector<uint8_t> payload = random_bytes(300, 42);
    payload[0] = 0;
    payload[10] = 0;
    payload.back() = 0;
    KVX_ASSERT_OK(kvx_agent_notify(agent0_.get(), "agent1", payload.data(), payload.size()));
    auto notes = wait_notifications(agent1_.get());
    ASSERT_EQ(notes.size(), 1u);
    EXPECT_EQ(notes[0].sender, "agent0");
    EXPECT_EQ(notes[0].message, payload) << "binary payload with NUL bytes did not round-trip";

    // An empty sync message on a write is still delivered, once.
    kvx_transfer_request r = make_request(KVX_OP_WRITE, &d0_, &d1_, 1, "agent1");
    r.sync_message = nullptr;
    r.sync_message_len = 0;
    r.has_sync_message = true;
    XferPtr x;
    ASSERT_NO_FATAL_FAILURE(submit(agent0_.get(), r, &x));
    notes = wait_notifications(agent1_.get());
    ASSERT_EQ(notes.size(), 1u);
    EXPECT_EQ(notes[0].sender, "agent0");
    EXPECT_TRUE(notes[0].message.empty());
    ASSERT_NO_FATAL_FAILURE(wait_success(x.get()));
}

TEST_F(UcxAgentPair, SyncMessageOrderAndCount)
{
    ASSERT_NO_FATAL_FAILURE(Load());
    constexpr int kCount = 20;
    for (int i = 0; i < kCount; ++i)
    {
        std::string m = "msg-" + std::to_string(i);
        KVX_ASSERT_OK(kvx_agent_notify(agent0_.get(), "agent1", reinterpret_cast<const uint8_t*>(m.data()), m.size()));
    }
    std::vector<Notification> all;
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(kTimeoutMs);
    while (all.size() < static_cast<size_t>(kCount) && std::chrono::steady_clock::now() < deadline)
    {
        auto more = drain(agent1_.get());
        all.insert(all.end(), more.begin(), more.end());
        if (more.empty())
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    ASSERT_EQ(all.size(), static_cast<size_t>(kCount));
    for (int i = 0; i < kCount; ++i)
    {
        EXPECT_EQ(all[i].sender, "agent0");
        EXPECT_EQ(std::string(all[i].message.begin(), all[i].message.end()), "msg-" + std::to_string(i));
    }
}

TEST(UcxAgent, NotifySelf)
{
    AgentPtr a0;
    ASSERT_NO_FATAL_FAILURE(make_agent("agent0", &a0));
    const std::string text = "note to self";
    KVX_ASSERT_OK(kvx_agent_notify(a0.get(), "agent0", reinterpret_cast<const uint8_t*>(text.data()), text.size()));
    auto notes = wait_notifications(a0.get());
    ASSERT_EQ(notes.size(), 1u);
    EXPECT_EQ(notes[0].sender, "agent0");
    EXPECT_EQ(std::string(notes[0].message.begin(), notes[0].message.end()), text);
}

TEST_F(UcxAgentPair, LoadThenWriteImmediately)
{
    // load_remote_by_connection_info returns once the peer is usable: no polling.
    ASSERT_NO_FATAL_FAILURE(Load(/*poll=*/false));
    XferPtr x;
    ASSERT_NO_FATAL_FAILURE(submit(agent0_.get(), make_request(KVX_OP_WRITE, &d0_, &d1_, 1, "agent1"), &x));
    ASSERT_NO_FATAL_FAILURE(wait_success(x.get()));
    EXPECT_EQ(mem0_, mem1_);
}

TEST_F(UcxAgentPair, WaitTimeoutZero)
{
    ASSERT_NO_FATAL_FAILURE(Load());
    XferPtr x;
    ASSERT_NO_FATAL_FAILURE(submit(agent0_.get(), make_request(KVX_OP_WRITE, &d0_, &d1_, 1, "agent1"), &x));
    kvx_transfer_state state = KVX_TRANSFER_FAILURE;
    kvx_status st = kvx_xfer_wait(x.get(), 0, &state);
    EXPECT_GE(st, 0) << describe(st);
    EXPECT_TRUE(state == KVX_TRANSFER_IN_PROGRESS || state == KVX_TRANSFER_SUCCESS) << "state " << state;
    ASSERT_NO_FATAL_FAILURE(wait_success(x.get()));
    // Waiting again on a finished transfer keeps reporting success.
    KVX_EXPECT_OK(kvx_xfer_wait(x.get(), 0, &state));
    EXPECT_EQ(state, KVX_TRANSFER_SUCCESS);
    EXPECT_EQ(mem0_, mem1_);
}

TEST_F(UcxAgentPair, ReleaseAfterCompletion)
{
    ASSERT_NO_FATAL_FAILURE(Load());
    XferPtr x;
    ASSERT_NO_FATAL_FAILURE(submit(agent0_.get(), make_request(KVX_OP_WRITE, &d0_, &d1_, 1, "agent1"), &x));
    ASSERT_NO_FATAL_FAILURE(wait_success(x.get()));
    bool released = false;
    KVX_EXPECT_OK(kvx_xfer_release(x.get(), &released));
    EXPECT_TRUE(released);
    Bytes why;
    KVX_EXPECT_OK(kvx_xfer_last_status(x.get(), why.out()));
    EXPECT_EQ(mem0_, mem1_);
}

TEST_F(UcxAgentPair, ManyDescriptorsOneRequest)
{
    ASSERT_NO_FATAL_FAILURE(Load());
    // Four 25-byte slices, written in reverse order of placement.
    std::vector<kvx_memory_desc> src, dst;
    for (size_t i = 0; i < 4; ++i)
    {
        src.push_back(desc_of(mem0_.data() + 25 * i, 25));
        dst.push_back(desc_of(mem1_.data() + 25 * (3 - i), 25));
    }
    XferPtr x;
    ASSERT_NO_FATAL_FAILURE(
        submit(agent0_.get(), make_request(KVX_OP_WRITE, src.data(), dst.data(), src.size(), "agent1"), &x));
    ASSERT_NO_FATAL_FAILURE(wait_success(x.get()));
    for (size_t i = 0; i < 4; ++i)
        EXPECT_EQ(0, std::memcmp(mem0_.data() + 25 * i, mem1_.data() + 25 * (3 - i), 25)) << "slice " << i;
}

TEST_F(UcxAgentPair, UnregisteredLocalMemory)
{
    ASSERT_NO_FATAL_FAILURE(Load());
    std::vector<uint8_t> other(kSize, 9);
    kvx_memory_desc bad = desc_of(other.data(), kSize);
    kvx_xfer* x = nullptr;
    kvx_transfer_request r = make_request(KVX_OP_WRITE, &bad, &d1_, 1, "agent1");
    KVX_EXPECT_ERR(kvx_agent_submit(agent0_.get(), &r, &x), KVX_ERR_NOT_REGISTERED);
    EXPECT_EQ(x, nullptr);
    kvx_xfer_destroy(x);
    // Local range that runs past the registered region.
    kvx_memory_desc past = desc_of(mem0_.data() + 50, kSize);
    kvx_memory_desc dst_past = desc_of(mem1_.data(), kSize);
    r = make_request(KVX_OP_WRITE, &past, &dst_past, 1, "agent1");
    KVX_EXPECT_ERR(kvx_agent_submit(agent0_.get(), &r, &x), KVX_ERR_NOT_REGISTERED);
    EXPECT_EQ(x, nullptr);
    kvx_xfer_destroy(x);
    EXPECT_TRUE(std::all_of(mem1_.begin(), mem1_.end(), [](uint8_t b) { return b == 0; })) << "something was posted";
}

TEST_F(UcxAgentPair, OutOfRangeRemote)
{
    ASSERT_NO_FATAL_FAILURE(Load());
    kvx_memory_desc src = desc_of(mem0_.data(), 50);
    kvx_memory_desc dst = desc_of(mem1_.data() + 60, 50); // ends 10 bytes past agent1's region
    bool ok = true;
    KVX_EXPECT_OK(kvx_agent_check_remote_descs(agent0_.get(), "agent1", KVX_MEMORY_DRAM, &dst, 1, &ok));
    EXPECT_FALSE(ok);
    kvx_xfer* x = nullptr;
    kvx_transfer_request r = make_request(KVX_OP_WRITE, &src, &dst, 1, "agent1");
    KVX_EXPECT_ERR(kvx_agent_submit(agent0_.get(), &r, &x), KVX_ERR_NOT_REGISTERED);
    EXPECT_EQ(x, nullptr);
    kvx_xfer_destroy(x);
    // Wholly outside: a buffer agent1 never registered.
    std::vector<uint8_t> stranger(50);
    kvx_memory_desc dst2 = desc_of(stranger.data(), 50);
    r = make_request(KVX_OP_READ, &src, &dst2, 1, "agent1");
    KVX_EXPECT_ERR(kvx_agent_submit(agent0_.get(), &r, &x), KVX_ERR_NOT_REGISTERED);
    EXPECT_EQ(x, nullptr);
    kvx_xfer_destroy(x);
    EXPECT_TRUE(std::all_of(mem1_.begin(), mem1_.end(), [](uint8_t b) { return b == 0; })) << "something was posted";
}

TEST_F(UcxAgentPair, UnknownPeer)
{
    kvx_xfer* x = nullptr;
    kvx_transfer_request r = make_request(KVX_OP_WRITE, &d0_, &d1_, 1, "nobody");
    kvx_status st = kvx_agent_submit(agent0_.get(), &r, &x);
    EXPECT_LT(st, 0) << describe(st);
    EXPECT_EQ(x, nullptr);
    kvx_xfer_destroy(x);
    KVX_EXPECT_ERR(kvx_agent_invalidate_remote(agent0_.get(), "nobody"), KVX_ERR_NOT_FOUND);
}

TEST_F(UcxAgentPair, MismatchedLengthsRejected)
{
    ASSERT_NO_FATAL_FAILURE(Load());
    kvx_memory_desc src = desc_of(mem0_.data(), 40);
    kvx_memory_desc dst = desc_of(mem1_.data(), 50);
    kvx_xfer* x = nullptr;
    kvx_transfer_request r = make_request(KVX_OP_WRITE, &src, &dst, 1, "agent1");
    KVX_EXPECT_ERR(kvx_agent_submit(agent0_.get(), &r, &x), KVX_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(x, nullptr);
    kvx_xfer_destroy(x);
}
