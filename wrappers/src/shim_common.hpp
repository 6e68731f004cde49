// Pieces both TensorRT-LLM wrapper libraries share: turning kvx_* status
// codes into C++ exceptions, owning kvx_bytes, and the one-line log of which
// backend a wrapper picked.
#pragma once

#include <kvxfer.h>

#include <cstdint>
#include <stdexcept>
#include <string>

// Everything in here is private to the wrapper that compiles it: two wrappers in
// one process must not interpose each other's copies.
namespace [[gnu::visibility("hidden")]] kvxfer_trtllm
{

// A failed kvx_* call. Derives from std::runtime_error so TensorRT-LLM's
// catch (std::exception const&) handlers see the message.
class KvxError : public std::runtime_error
{
public:
    KvxError(kvx_status status, std::string const& message)
        : std::runtime_error(message)
        , mStatus(status)
    {
    }

    [[nodiscard]] kvx_status status() const noexcept
    {
        return mStatus;
    }

private:
    kvx_status mStatus;
};

// Throws KvxError naming `what`, the status and kvx_last_error() unless status is KVX_OK.
void check(kvx_status status, char const* what);

// Owns bytes kvxfer handed out.
class OwnedBytes
{
public:
    OwnedBytes() = default;
    OwnedBytes(OwnedBytes const&) = delete;
    OwnedBytes& operator=(OwnedBytes const&) = delete;

    ~OwnedBytes()
    {
        kvx_bytes_free(&mBytes);
    }

    kvx_bytes* out() noexcept
    {
        return &mBytes;
    }

    [[nodiscard]] std::string str() const
    {
        return mBytes.data ? std::string(reinterpret_cast<char const*>(mBytes.data), mBytes.len) : std::string();
    }

private:
    kvx_bytes mBytes{nullptr, 0};
};

// Whole decimal integer `text` (no sign-less garbage, no overflow) into `out`.
bool parseDecimal(char const* text, long long& out) noexcept;

// A non-negative integer from environment variable `name`; `fallback` when it
// is unset or empty, and (with a warning on stderr) when it is not such a number.
int64_t envNonNegative(char const* name, int64_t fallback);

// Refuses (throws) when this process runs a TensorRT-LLM release whose plug-in
// interfaces are not the ones this wrapper was built for; see shim_common.cpp.
// KVX_TRTLLM_SKIP_VERSION_CHECK=1 turns the refusal into a warning on stderr.
void requireMatchingRelease(char const* wrapperName);

// Name of a kvx_backend value ("UCX", "NIXL").
// The line (kvxferLine.h numbering) of a TensorRT-LLM version string: 0
// before 1.0, -1 when it cannot be read.
int lineOfVersion(char const* version) noexcept;

char const* backendName(uint32_t backend) noexcept;

// Logs once per process and wrapper which backend `what` uses and why, on
// stderr, unless KVX_LOG=error.
void logBackendOnce(char const* wrapperName, char const* what, uint32_t backend);

// Whether KVX_LOG=error asks the wrappers to print nothing but errors.
bool infoLogsSilenced() noexcept;

} // namespace kvxfer_trtllm
