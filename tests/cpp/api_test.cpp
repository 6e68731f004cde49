// kvxfer C API tests that need no network: status names, version, argument
// checking, backend selection, descriptor validation.
#include "kvx_test_util.hpp"

#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstring>
#include <utility>

using namespace kvxtest;

namespace
{

// Clear TensorRT-LLM's selection variables for the duration of a test.
struct CleanBackendEnv
{
    ScopedEnv ucx{"TRTLLM_USE_UCX_KVCACHE", nullptr};
    ScopedEnv nixl{"TRTLLM_USE_NIXL_KVCACHE", nullptr};
};

uint32_t resolve(uint32_t requested)
{
    uint32_t out = 0xdeadbeef;
    kvx_status st = kvx_backend_resolve(requested, &out);
    EXPECT_EQ(st, KVX_OK) << describe(st);
    return out;
}

} // namespace

TEST(Status, NamesEveryStatus)
{
    const std::pair<int32_t, const char*> names[] = {
        {KVX_OK, "KVX_OK"},
        {KVX_IN_PROGRESS, "KVX_IN_PROGRESS"},
        {KVX_ERR_INVALID_ARGUMENT, "KVX_ERR_INVALID_ARGUMENT"},
        {KVX_ERR_BACKEND_UNAVAILABLE, "KVX_ERR_BACKEND_UNAVAILABLE"},
        {KVX_ERR_NOT_FOUND, "KVX_ERR_NOT_FOUND"},
        {KVX_ERR_ALREADY_EXISTS, "KVX_ERR_ALREADY_EXISTS"},
        {KVX_ERR_TIMEOUT, "KVX_ERR_TIMEOUT"},
        {KVX_ERR_PEER, "KVX_ERR_PEER"},
        {KVX_ERR_TRANSPORT, "KVX_ERR_TRANSPORT"},
        {KVX_ERR_MALFORMED, "KVX_ERR_MALFORMED"},
        {KVX_ERR_NOT_REGISTERED, "KVX_ERR_NOT_REGISTERED"},
        {KVX_ERR_SIZE_MISMATCH, "KVX_ERR_SIZE_MISMATCH"},
        {KVX_ERR_CANCELED, "KVX_ERR_CANCELED"},
        {KVX_ERR_UNSUPPORTED, "KVX_ERR_UNSUPPORTED"},
        {KVX_ERR_PANIC, "KVX_ERR_PANIC"},
        {KVX_ERR_SYSTEM, "KVX_ERR_SYSTEM"},
        {KVX_ERR_INTERNAL, "KVX_ERR_INTERNAL"},
        {KVX_ERR_AUTH, "KVX_ERR_AUTH"},
    };
    for (const auto& [code, name] : names)
    {
        const char* got = kvx_status_str(code);
        ASSERT_NE(got, nullptr) << code;
        EXPECT_STREQ(got, name) << "status " << code;
    }
    EXPECT_EQ(kvx_status_str(KVX_ERR_TIMEOUT), kvx_status_str(KVX_ERR_TIMEOUT)) << "static string";
}

TEST(Status, UnknownValues)
{
    for (int32_t code : {2, 3, 100, -17, -18, -1000, INT32_MIN, INT32_MAX})
    {
        const char* got = kvx_status_str(code);
        ASSERT_NE(got, nullptr) << code;
        EXPECT_STREQ(got, "KVX_UNKNOWN_STATUS") << "status " << code;
    }
}

TEST(Version, MatchesHeader)
{
    ASSERT_NE(kvx_version(), nullptr);
    EXPECT_STREQ(kvx_version(), KVXFER_VERSION_STRING);
    std::string expect = std::to_string(KVXFER_VERSION_MAJOR) + "." + std::to_string(KVXFER_VERSION_MINOR) + "."
                         + std::to_string(KVXFER_VERSION_PATCH);
    EXPECT_EQ(expect, KVXFER_VERSION_STRING);
}

TEST(LastError, EmptyOrStringAndPerThread)
{
    ASSERT_NE(kvx_last_error(), nullptr);
    // Fail on this thread; another thread's last error is unaffected.
    EXPECT_EQ(kvx_backend_resolve(0, nullptr), KVX_ERR_INVALID_ARGUMENT);
    std::string mine = kvx_last_error();
    EXPECT_FALSE(mine.empty());
    std::string other = "unset";
    std::thread([&] { other = kvx_last_error(); }).join();
    EXPECT_EQ(other, "") << "a fresh thread has no last error";
    EXPECT_EQ(mine, kvx_last_error());
}

TEST(Config, AgentDefaults)
{
    kvx_agent_config cfg;
    std::memset(&cfg, 0xAB, sizeof cfg);
    KVX_ASSERT_OK(kvx_agent_config_init(&cfg));
    EXPECT_EQ(cfg.struct_size, sizeof(kvx_agent_config));
    EXPECT_EQ(cfg.name, nullptr);
    EXPECT_EQ(cfg.backend, static_cast<uint32_t>(KVX_BACKEND_AUTO));
    EXPECT_TRUE(cfg.use_listen_thread);
    EXPECT_EQ(cfg.listen_ip, nullptr);
    EXPECT_EQ(cfg.listen_port, 0);
}

TEST(Config, CmDefaults)
{
    kvx_cm_config cfg;
    std::memset(&cfg, 0xAB, sizeof cfg);
    KVX_ASSERT_OK(kvx_cm_config_init(&cfg));
    EXPECT_EQ(cfg.struct_size, sizeof(kvx_cm_config));
    EXPECT_EQ(cfg.backend, static_cast<uint32_t>(KVX_BACKEND_AUTO));
    EXPECT_EQ(cfg.listen_ip, nullptr);
    EXPECT_EQ(cfg.listen_port, 0);
}

TEST(NullArguments, ReturnInvalidArgument)
{
    constexpr kvx_status E = KVX_ERR_INVALID_ARGUMENT;
    kvx_agent_config acfg;
    KVX_ASSERT_OK(kvx_agent_config_init(&acfg));
    kvx_cm_config ccfg;
    KVX_ASSERT_OK(kvx_cm_config_init(&ccfg));
    kvx_agent* agent = nullptr;
    kvx_cm* cm = nullptr;
    kvx_bytes bytes{nullptr, 0};
    uint32_t u32 = 0;
    bool flag = false;
    kvx_transfer_state state = KVX_TRANSFER_IN_PROGRESS;
    kvx_xfer* xfer = nullptr;
    kvx_notification_list* list = nullptr;
    const kvx_conn* conn = nullptr;
    uint8_t buf[8] = {};
    kvx_memory_desc desc = desc_of(buf, sizeof buf);
    kvx_transfer_request req{};
    const char* addr = "127.0.0.1:1";

    KVX_EXPECT_ERR(kvx_agent_config_init(nullptr), E);
    KVX_EXPECT_ERR(kvx_cm_config_init(nullptr), E);
    KVX_EXPECT_ERR(kvx_agent_create(nullptr, &agent), E);
    EXPECT_EQ(agent, nullptr);
    acfg.name = "x";
    KVX_EXPECT_ERR(kvx_agent_create(&acfg, nullptr), E);
    acfg.name = nullptr; // name is required
    KVX_EXPECT_ERR(kvx_agent_create(&acfg, &agent), E);
    EXPECT_EQ(agent, nullptr);
    KVX_EXPECT_ERR(kvx_agent_backend(nullptr, &u32), E);
    KVX_EXPECT_ERR(kvx_agent_register_memory(nullptr, KVX_MEMORY_DRAM, &desc, 1), E);
    KVX_EXPECT_ERR(kvx_agent_deregister_memory(nullptr, KVX_MEMORY_DRAM, &desc, 1), E);
    KVX_EXPECT_ERR(kvx_agent_get_local_desc(nullptr, &bytes), E);
    KVX_EXPECT_ERR(kvx_agent_get_connection_info(nullptr, &bytes), E);
    KVX_EXPECT_ERR(kvx_agent_load_remote(nullptr, "peer", buf, sizeof buf), E);
    KVX_EXPECT_ERR(kvx_agent_load_remote_by_connection_info(nullptr, "peer", addr, 10), E);
    KVX_EXPECT_ERR(kvx_agent_invalidate_remote(nullptr, "peer"), E);
    KVX_EXPECT_ERR(kvx_agent_check_remote_descs(nullptr, "peer", KVX_MEMORY_DRAM, &desc, 1, &flag), E);
    KVX_EXPECT_ERR(kvx_agent_submit(nullptr, &req, &xfer), E);
    KVX_EXPECT_ERR(kvx_agent_notify(nullptr, "peer", buf, sizeof buf), E);
    KVX_EXPECT_ERR(kvx_agent_get_notifications(nullptr, &list), E);
    KVX_EXPECT_ERR(kvx_notification_list_get(nullptr, 0, nullptr, nullptr, nullptr), E);
    EXPECT_EQ(kvx_notification_list_len(nullptr), 0u);
    KVX_EXPECT_ERR(kvx_xfer_is_completed(nullptr, &flag), E);
    KVX_EXPECT_ERR(kvx_xfer_wait(nullptr, 0, &state), E);
    KVX_EXPECT_ERR(kvx_xfer_release(nullptr, &flag), E);
    KVX_EXPECT_ERR(kvx_xfer_last_status(nullptr, &bytes), E);
    KVX_EXPECT_ERR(kvx_cm_create(nullptr, &cm), E);
    KVX_EXPECT_ERR(kvx_cm_create(&ccfg, nullptr), E);
    KVX_EXPECT_ERR(kvx_cm_backend(nullptr, &u32), E);
    KVX_EXPECT_ERR(kvx_cm_get_local_address(nullptr, &bytes), E);
    KVX_EXPECT_ERR(kvx_cm_get_connections(nullptr, &addr, 1, 10, &conn), E);
    KVX_EXPECT_ERR(kvx_cm_recv_connect(nullptr, 19, buf, sizeof buf, 10, &conn), E);
    KVX_EXPECT_ERR(kvx_cm_is_running(nullptr, &flag), E);
    KVX_EXPECT_ERR(kvx_cm_shutdown(nullptr), E);
    KVX_EXPECT_ERR(kvx_conn_send(nullptr, 19, buf, sizeof buf, 10), E);
    KVX_EXPECT_ERR(kvx_conn_recv(nullptr, 19, buf, sizeof buf, 10), E);
    KVX_EXPECT_ERR(kvx_conn_peer_address(nullptr, &bytes), E);
    KVX_EXPECT_ERR(kvx_backend_resolve(KVX_BACKEND_AUTO, nullptr), E);
    KVX_EXPECT_ERR(kvx_backend_info_get(KVX_BACKEND_UCX, nullptr), E);
    EXPECT_EQ(bytes.data, nullptr);
}

TEST(NullArguments, DestroyAndFreeIgnoreNull)
{
    kvx_agent_destroy(nullptr);
    kvx_xfer_destroy(nullptr);
    kvx_cm_destroy(nullptr);
    kvx_notification_list_free(nullptr);
    kvx_bytes_free(nullptr);
    kvx_bytes zero{nullptr, 0};
    kvx_bytes_free(&zero);
    kvx_bytes_free(&zero);
    SUCCEED();
}

TEST(NullArguments, BadEnumValues)
{
    uint32_t out = 0;
    KVX_EXPECT_ERR(kvx_backend_resolve(3, &out), KVX_ERR_INVALID_ARGUMENT);
    KVX_EXPECT_ERR(kvx_backend_resolve(0xffffffffu, &out), KVX_ERR_INVALID_ARGUMENT);
    kvx_agent_config cfg;
    KVX_ASSERT_OK(kvx_agent_config_init(&cfg));
    cfg.name = "bad-backend";
    cfg.backend = 7;
    kvx_agent* agent = nullptr;
    KVX_EXPECT_ERR(kvx_agent_create(&cfg, &agent), KVX_ERR_INVALID_ARGUMENT);
    EXPECT_EQ(agent, nullptr);
    kvx_agent_destroy(agent);
}

TEST(Backend, ExplicitChoiceWins)
{
    ScopedEnv nixl("TRTLLM_USE_NIXL_KVCACHE", "1");
    ScopedEnv ucx("TRTLLM_USE_UCX_KVCACHE", nullptr);
    EXPECT_EQ(resolve(KVX_BACKEND_UCX), static_cast<uint32_t>(KVX_BACKEND_UCX));
    ScopedEnv ucx2("TRTLLM_USE_UCX_KVCACHE", "1");
    EXPECT_EQ(resolve(KVX_BACKEND_NIXL), static_cast<uint32_t>(KVX_BACKEND_NIXL));
}

TEST(Backend, AutoDefaultsToUcx)
{
    CleanBackendEnv clean;
    EXPECT_EQ(resolve(KVX_BACKEND_AUTO), static_cast<uint32_t>(KVX_BACKEND_UCX));
}

TEST(Backend, AutoFollowsEnvironmentPerCall)
{
    CleanBackendEnv clean;
    {
        ScopedEnv nixl("TRTLLM_USE_NIXL_KVCACHE", "1");
        EXPECT_EQ(resolve(KVX_BACKEND_AUTO), static_cast<uint32_t>(KVX_BACKEND_NIXL));
    }
    {
        ScopedEnv ucx("TRTLLM_USE_UCX_KVCACHE", "1");
        EXPECT_EQ(resolve(KVX_BACKEND_AUTO), static_cast<uint32_t>(KVX_BACKEND_UCX));
    }
    {
        // Both set: UCX first, as TensorRT-LLM's C++ transceiver.
        ScopedEnv ucx("TRTLLM_USE_UCX_KVCACHE", "1");
        ScopedEnv nixl("TRTLLM_USE_NIXL_KVCACHE", "1");
        EXPECT_EQ(resolve(KVX_BACKEND_AUTO), static_cast<uint32_t>(KVX_BACKEND_UCX));
    }
    {
        // Only the exact value "1" counts.
        ScopedEnv nixl("TRTLLM_USE_NIXL_KVCACHE", "true");
        EXPECT_EQ(resolve(KVX_BACKEND_AUTO), static_cast<uint32_t>(KVX_BACKEND_UCX));
    }
    {
        ScopedEnv nixl("TRTLLM_USE_NIXL_KVCACHE", "0");
        EXPECT_EQ(resolve(KVX_BACKEND_AUTO), static_cast<uint32_t>(KVX_BACKEND_UCX));
    }
    EXPECT_EQ(resolve(KVX_BACKEND_AUTO), static_cast<uint32_t>(KVX_BACKEND_UCX));
}

TEST(Backend, UcxInfo)
{
    kvx_backend_info info;
    std::memset(&info, 0, sizeof info);
    info.struct_size = sizeof info;
    KVX_ASSERT_OK(kvx_backend_info_get(KVX_BACKEND_UCX, &info));
    EXPECT_EQ(info.backend, static_cast<uint32_t>(KVX_BACKEND_UCX));
    ASSERT_NE(info.name, nullptr);
    EXPECT_STREQ(info.name, "UCX");
    ASSERT_NE(info.library_path, nullptr);
    EXPECT_EQ(info.library_path[0], '/') << info.library_path;
    ASSERT_NE(info.library_version, nullptr);
    EXPECT_STRNE(info.library_version, "");
    std::printf("UCX backend: %s (version %s)\n", info.library_path, info.library_version);
}

TEST(Backend, MissingNixlIsAClearError)
{
    // Each CTest case runs in its own process, so NIXL is not loaded yet; if
    // UCX is (the binary run by hand), NIXL is refused for that reason instead.
    ScopedEnv lib("KVX_NIXL_LIB", "/nonexistent/libnixl_capi.so");
    kvx_agent_config cfg;
    KVX_ASSERT_OK(kvx_agent_config_init(&cfg));
    cfg.name = "nixl-agent";
    cfg.backend = KVX_BACKEND_NIXL;
    cfg.listen_ip = "127.0.0.1";
    kvx_agent* agent = nullptr;
    KVX_EXPECT_ERR(kvx_agent_create(&cfg, &agent), KVX_ERR_BACKEND_UNAVAILABLE);
    EXPECT_EQ(agent, nullptr);
    EXPECT_NE(std::string(kvx_last_error()).find("NIXL"), std::string::npos) << kvx_last_error();
    kvx_agent_destroy(agent);

    CleanBackendEnv clean;
    ScopedEnv nixl("TRTLLM_USE_NIXL_KVCACHE", "1");
    kvx_cm_config cm_cfg;
    KVX_ASSERT_OK(kvx_cm_config_init(&cm_cfg));
    cm_cfg.listen_ip = "127.0.0.1";
    kvx_cm* cm = nullptr;
    KVX_EXPECT_ERR(kvx_cm_create(&cm_cfg, &cm), KVX_ERR_BACKEND_UNAVAILABLE);
    EXPECT_EQ(cm, nullptr);
}

// ---- descriptor validation (UCX agent without a listener; no peer) -------------

class Descriptor : public ::testing::Test
{
protected:
    void SetUp() override
    {
        kvx_agent_config cfg;
        KVX_ASSERT_OK(kvx_agent_config_init(&cfg));
        cfg.name = "validator";
        cfg.backend = KVX_BACKEND_UCX;
        cfg.use_listen_thread = false;
        cfg.listen_ip = "127.0.0.1";
        kvx_agent* a = nullptr;
        KVX_ASSERT_OK(kvx_agent_create(&cfg, &a));
        agent_.reset(a);
        cfg.name = "source";
        kvx_agent* s = nullptr;
        KVX_ASSERT_OK(kvx_agent_create(&cfg, &s));
        source_.reset(s);
        kvx_memory_desc d = desc_of(mem_.data(), mem_.size());
        KVX_ASSERT_OK(kvx_agent_register_memory(source_.get(), KVX_MEMORY_DRAM, &d, 1));
        KVX_ASSERT_OK(kvx_agent_get_local_desc(source_.get(), good_.out()));
        ASSERT_GT(good_.b.len, 4u);
    }
    std::vector<uint8_t> mem_ = std::vector<uint8_t>(100, 7);
    AgentPtr agent_, source_;
    Bytes good_;
};

TEST_F(Descriptor, GoodDescriptorLoads)
{
    KVX_EXPECT_OK(kvx_agent_load_remote(agent_.get(), "source", good_.b.data, good_.b.len));
    bool ok = false;
    kvx_memory_desc d = desc_of(mem_.data(), mem_.size());
    KVX_EXPECT_OK(kvx_agent_check_remote_descs(agent_.get(), "source", KVX_MEMORY_DRAM, &d, 1, &ok));
    EXPECT_TRUE(ok);
    KVX_EXPECT_OK(kvx_agent_invalidate_remote(agent_.get(), "source"));
    KVX_EXPECT_ERR(kvx_agent_invalidate_remote(agent_.get(), "source"), KVX_ERR_NOT_FOUND);
}

TEST_F(Descriptor, NameMustMatch)
{
    kvx_status st = kvx_agent_load_remote(agent_.get(), "someone-else", good_.b.data, good_.b.len);
    EXPECT_LT(st, 0) << describe(st);
    EXPECT_STRNE(kvx_last_error(), "");
}

TEST_F(Descriptor, GarbageIsMalformed)
{
    for (size_t len : {1u, 3u, 4u, 16u, 100u, 4096u})
    {
        for (uint32_t seed = 1; seed <= 8; ++seed)
        {
            auto junk = random_bytes(len, seed * 7919u + static_cast<uint32_t>(len));
            KVX_EXPECT_ERR(kvx_agent_load_remote(agent_.get(), "source", junk.data(), junk.size()), KVX_ERR_MALFORMED);
        }
    }
    const uint8_t text[] = "KVXD this is not a descriptor";
    KVX_EXPECT_ERR(kvx_agent_load_remote(agent_.get(), "source", text, sizeof text), KVX_ERR_MALFORMED);
}

TEST_F(Descriptor, TruncatedIsMalformed)
{
    std::vector<uint8_t> good = good_.vec();
    for (size_t len = 1; len < good.size(); ++len)
    {
        std::vector<uint8_t> cut(good.begin(), good.begin() + len);
        KVX_EXPECT_ERR(kvx_agent_load_remote(agent_.get(), "source", cut.data(), cut.size()), KVX_ERR_MALFORMED);
    }
    kvx_status st = kvx_agent_load_remote(agent_.get(), "source", good.data(), 0);
    EXPECT_TRUE(st == KVX_ERR_MALFORMED || st == KVX_ERR_INVALID_ARGUMENT) << describe(st);
    // Trailing junk after a valid descriptor is rejected too, or at least not a crash.
    std::vector<uint8_t> longer = good;
    longer.push_back(0x5a);
    st = kvx_agent_load_remote(agent_.get(), "source", longer.data(), longer.size());
    EXPECT_TRUE(st == KVX_OK || st == KVX_ERR_MALFORMED) << describe(st);
}

TEST_F(Descriptor, CorruptedBytesNeverCrash)
{
    // Only the framing (magic, version, backend, name) is flipped: the packed UCX
    // worker address and rkeys that follow are opaque to kvxfer.
    std::vector<uint8_t> good = good_.vec();
    for (size_t i = 0; i < std::min<size_t>(good.size(), 16); ++i)
    {
        for (uint8_t flip : {0x01, 0x80, 0xff})
        {
            std::vector<uint8_t> bad = good;
            bad[i] ^= flip;
            kvx_status st = kvx_agent_load_remote(agent_.get(), "source", bad.data(), bad.size());
            // A flipped address byte can still be a well-formed descriptor; anything
            // else must be rejected as malformed (or as a bad name), never crash.
            EXPECT_TRUE(st == KVX_OK || st == KVX_ERR_MALFORMED || st == KVX_ERR_INVALID_ARGUMENT)
                << "byte " << i << " ^ " << int(flip) << ": " << describe(st);
        }
    }
}
