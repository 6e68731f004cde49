// Small utilities shared by the kvxfer GoogleTest suites.
#pragma once

#include <kvxfer.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace kvxtest
{

// Generous bound for every blocking call so a broken backend fails, never hangs.
constexpr int64_t kTimeoutMs = 10000;

// The backend the contract suites run on: chosen by TensorRT-LLM's variables
// (CTest registers each suite once per backend), as for any caller.
inline uint32_t backend_under_test()
{
    uint32_t chosen = 0;
    kvx_backend_resolve(KVX_BACKEND_AUTO, &chosen);
    return chosen;
}

inline std::string describe(kvx_status st)
{
    return std::string(kvx_status_str(st)) + " (" + std::to_string(static_cast<int>(st)) + "): " + kvx_last_error();
}

} // namespace kvxtest

// Assert / expect a kvx_* call returns KVX_OK, printing kvx_last_error() otherwise.
#define KVX_ASSERT_OK(expr)                                                                                            \
    do                                                                                                                 \
    {                                                                                                                  \
        kvx_status kvx_st_ = (expr);                                                                                   \
        ASSERT_EQ(kvx_st_, KVX_OK) << #expr << " -> " << ::kvxtest::describe(kvx_st_);                                 \
    } while (0)
#define KVX_EXPECT_OK(expr)                                                                                            \
    do                                                                                                                 \
    {                                                                                                                  \
        kvx_status kvx_st_ = (expr);                                                                                   \
        EXPECT_EQ(kvx_st_, KVX_OK) << #expr << " -> " << ::kvxtest::describe(kvx_st_);                                 \
    } while (0)
// Expect a specific error code and a non-empty kvx_last_error().
#define KVX_EXPECT_ERR(expr, code)                                                                                     \
    do                                                                                                                 \
    {                                                                                                                  \
        kvx_status kvx_st_ = (expr);                                                                                   \
        EXPECT_EQ(kvx_st_, (code)) << #expr << " -> " << ::kvxtest::describe(kvx_st_);                                 \
        if (kvx_st_ < 0)                                                                                               \
        {                                                                                                              \
            EXPECT_STRNE(kvx_last_error(), "") << #expr << ": empty kvx_last_error()";                                 \
        }                                                                                                              \
    } while (0)

namespace kvxtest
{

struct AgentDeleter
{
    void operator()(kvx_agent* a) const
    {
        kvx_agent_destroy(a);
    }
};
struct XferDeleter
{
    void operator()(kvx_xfer* x) const
    {
        kvx_xfer_destroy(x);
    }
};
struct CmDeleter
{
    void operator()(kvx_cm* c) const
    {
        kvx_cm_destroy(c);
    }
};
struct NotifDeleter
{
    void operator()(kvx_notification_list* l) const
    {
        kvx_notification_list_free(l);
    }
};
using AgentPtr = std::unique_ptr<kvx_agent, AgentDeleter>;
using XferPtr = std::unique_ptr<kvx_xfer, XferDeleter>;
using CmPtr = std::unique_ptr<kvx_cm, CmDeleter>;
using NotifPtr = std::unique_ptr<kvx_notification_list, NotifDeleter>;

// Owns kvx_bytes and frees them with kvx_bytes_free.
struct Bytes
{
    kvx_bytes b{nullptr, 0};
    Bytes() = default;
    Bytes(const Bytes&) = delete;
    Bytes& operator=(const Bytes&) = delete;
    ~Bytes()
    {
        kvx_bytes_free(&b);
    }
    kvx_bytes* out()
    {
        return &b;
    }
    std::string str() const
    {
        return b.data ? std::string(reinterpret_cast<const char*>(b.data), b.len) : std::string();
    }
    std::vector<uint8_t> vec() const
    {
        return b.data ? std::vector<uint8_t>(b.data, b.data + b.len) : std::vector<uint8_t>();
    }
};

inline kvx_memory_desc desc_of(const void* p, size_t len, uint32_t dev = 0)
{
    return kvx_memory_desc{static_cast<uint64_t>(reinterpret_cast<uintptr_t>(p)), static_cast<uint64_t>(len), dev};
}

inline std::vector<uint8_t> random_bytes(size_t n, uint32_t seed)
{
    std::mt19937 gen(seed);
    std::uniform_int_distribution<int> dist(0, 255);
    std::vector<uint8_t> v(n);
    for (auto& x : v)
        x = static_cast<uint8_t>(dist(gen));
    return v;
}

// Scoped environment variable (restores the previous value).
class ScopedEnv
{
public:
    ScopedEnv(const char* name, const char* value)
        : name_(name)
    {
        const char* old = std::getenv(name);
        had_ = old != nullptr;
        if (had_)
            old_ = old;
        if (value)
            ::setenv(name, value, 1);
        else
            ::unsetenv(name);
    }
    ~ScopedEnv()
    {
        if (had_)
            ::setenv(name_.c_str(), old_.c_str(), 1);
        else
            ::unsetenv(name_.c_str());
    }

private:
    std::string name_, old_;
    bool had_ = false;
};

// One drained notification.
struct Notification
{
    std::string sender;
    std::vector<uint8_t> message;
};

inline std::vector<Notification> drain(kvx_agent* agent, kvx_status* st_out = nullptr)
{
    std::vector<Notification> out;
    kvx_notification_list* raw = nullptr;
    kvx_status st = kvx_agent_get_notifications(agent, &raw);
    if (st_out)
        *st_out = st;
    NotifPtr list(raw);
    if (st != KVX_OK)
        return out;
    size_t n = kvx_notification_list_len(list.get());
    for (size_t i = 0; i < n; ++i)
    {
        const char* sender = nullptr;
        const uint8_t* msg = nullptr;
        size_t len = 0;
        if (kvx_notification_list_get(list.get(), i, &sender, &msg, &len) != KVX_OK)
            continue;
        out.push_back(Notification{sender ? sender : "", std::vector<uint8_t>(msg, msg + len)});
    }
    return out;
}

// Poll get_notifications until at least one arrives or the deadline passes.
inline std::vector<Notification> wait_notifications(kvx_agent* agent, int64_t timeout_ms = kTimeoutMs)
{
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    std::vector<Notification> got;
    do
    {
        kvx_status st = KVX_OK;
        got = drain(agent, &st);
        if (st != KVX_OK)
        {
            ADD_FAILURE() << "kvx_agent_get_notifications -> " << describe(st);
            return got;
        }
        if (!got.empty())
            return got;
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    } while (std::chrono::steady_clock::now() < deadline);
    return got;
}

} // namespace kvxtest
