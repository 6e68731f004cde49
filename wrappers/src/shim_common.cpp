#include "shim_common.hpp"

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>

namespace kvxfer_trtllm
{

void check(kvx_status status, char const* what)
{
    if (status == KVX_OK)
        return;
    // kvx_last_error() already starts with the status name; fall back to it alone.
    char const* detail = kvx_last_error();
    std::string message =
        std::string("kvxfer: ") + what + " failed: " + (detail && *detail ? detail : kvx_status_str(status));
    throw KvxError(status, message);
}

int64_t envNonNegative(char const* name, int64_t fallback)
{
    char const* value = std::getenv(name);
    if (value == nullptr || *value == '\0')
        return fallback;
    char* end = nullptr;
    errno = 0;
    long long parsed = std::strtoll(value, &end, 10);
    if (errno != 0 || *end != '\0' || parsed < 0)
    {
        std::fprintf(stderr, "kvxfer: %s=\"%s\" is not a non-negative integer; using %lld\n", name, value,
            static_cast<long long>(fallback));
        return fallback;
    }
    return parsed;
}

char const* backendName(uint32_t backend) noexcept
{
    switch (backend)
    {
    case KVX_BACKEND_UCX: return "UCX";
    case KVX_BACKEND_NIXL: return "NIXL";
    default: return "AUTO";
    }
}

void logBackendOnce(char const* wrapperName, char const* what, uint32_t backend)
{
    static std::once_flag once;
    std::call_once(once,
        [&]
        {
            char const* level = std::getenv("KVX_LOG");
            if (level != nullptr && std::strcmp(level, "error") == 0)
                return;
            auto env = [](char const* name)
            {
                char const* value = std::getenv(name);
                return value ? value : "(unset)";
            };
            std::fprintf(stderr,
                "kvxfer %s (%s): %s on the %s backend (TRTLLM_USE_UCX_KVCACHE=%s, TRTLLM_USE_NIXL_KVCACHE=%s)\n",
                kvx_version(), wrapperName, what, backendName(backend), env("TRTLLM_USE_UCX_KVCACHE"),
                env("TRTLLM_USE_NIXL_KVCACHE"));
        });
}

} // namespace kvxfer_trtllm
