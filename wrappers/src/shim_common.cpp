#include "shim_common.hpp"

#include <dlfcn.h>
#include <link.h>

#include <array>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <limits>
#include <mutex>
#include <optional>
#include <regex>
#include <string>

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

bool parseDecimal(char const* text, long long& out) noexcept
{
    char* end = nullptr;
    errno = 0;
    long long value = std::strtoll(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0')
        return false;
    out = value;
    return true;
}

int64_t envNonNegative(char const* name, int64_t fallback)
{
    char const* value = std::getenv(name);
    if (value == nullptr || *value == '\0')
        return fallback;
    long long parsed = 0;
    if (!parseDecimal(value, parsed) || parsed < 0)
    {
        std::fprintf(stderr, "kvxfer: %s=\"%s\" is not a non-negative integer; using %lld\n", name, value,
            static_cast<long long>(fallback));
        return fallback;
    }
    return parsed;
}

namespace
{

// The release a TensorRT-LLM install says it is: `__version__ = "..."` in
// tensorrt_llm/version.py, one folder above libs/ where its libraries live.
std::optional<std::string> versionBeside(std::string const& libraryPath)
{
    auto slash = libraryPath.rfind('/');
    if (slash == std::string::npos)
        return std::nullopt;
    std::ifstream file(libraryPath.substr(0, slash) + "/../version.py");
    std::string line;
    std::regex assignment(R"(^__version__\s*=\s*["']([^"']+)["'])");
    std::smatch match;
    while (std::getline(file, line))
        if (std::regex_search(line, match, assignment))
            return match[1].str();
    return std::nullopt;
}

struct LoadedRelease
{
    std::string version;
    std::string foundAt; // the version.py read
};

int findTrtllmLibrary(dl_phdr_info* info, size_t, void* out)
{
    std::string path = info->dlpi_name ? info->dlpi_name : "";
    auto slash = path.rfind('/');
    std::string base = slash == std::string::npos ? path : path.substr(slash + 1);
    if (base.rfind("libtensorrt_llm.so", 0) != 0)
        return 0;
    *static_cast<std::string*>(out) = path;
    return 1;
}

// Which TensorRT-LLM this process runs, where that can be told: from the
// libtensorrt_llm.so loaded into it, else from the folder this wrapper was
// loaded from (TensorRT-LLM's libs/, when the shipped file was replaced).
std::optional<LoadedRelease> loadedRelease()
{
    std::string trtllm;
    dl_iterate_phdr(findTrtllmLibrary, &trtllm);
    std::vector<std::string> candidates;
    if (!trtllm.empty())
        candidates.push_back(trtllm);
    Dl_info self{};
    if (dladdr(reinterpret_cast<void*>(&requireMatchingRelease), &self) != 0 && self.dli_fname)
        candidates.emplace_back(self.dli_fname);
    for (auto const& path : candidates)
        if (auto version = versionBeside(path))
            return LoadedRelease{*version, path.substr(0, path.rfind('/')) + "/../version.py"};
    return std::nullopt;
}

// A release as (major, minor, patch, rc); a final release sorts after its rcs.
using ReleaseKey = std::array<long, 4>;

std::optional<ReleaseKey> releaseKey(std::string const& version)
{
    std::smatch match;
    if (!std::regex_search(version, match, std::regex(R"(^(\d+)\.(\d+)\.(\d+)(?:rc(\d+))?)")))
        return std::nullopt;
    long rc = match[4].matched ? std::stol(match[4].str()) : std::numeric_limits<long>::max();
    return ReleaseKey{std::stol(match[1].str()), std::stol(match[2].str()), std::stol(match[3].str()), rc};
}

// The line (kvxferLine.h) whose interfaces a release has: the first release
// of each line, newest first (docs/trtllm.md says how each was established).
// 0: before 1.0, which no line serves. Newer releases count as the newest line.
int lineOfRelease(ReleaseKey const& release)
{
    struct First
    {
        ReleaseKey release;
        int line;
    };
    static First const firsts[] = {
        {{1, 4, 0, 0}, 104},
        {{1, 3, 0, 0}, 103},
        {{1, 2, 0, 1}, 102},
        {{1, 0, 0, 0}, 101},
    };
    for (auto const& first : firsts)
        if (release >= first.release)
            return first.line;
    return 0;
}

std::string lineName(int line)
{
    return std::to_string(line / 100) + "." + std::to_string(line % 100);
}

} // namespace

void requireMatchingRelease(char const* wrapperName)
{
#ifdef KVXFER_TRTLLM_REAL_HEADERS
    // Built against a release's own headers: that release is the line.
    (void)wrapperName;
#else
    static std::optional<LoadedRelease> const release = loadedRelease();
    if (!release)
        return; // not inside a TensorRT-LLM install: nothing to compare
    int line = lineOfVersion(release->version.c_str());
    if (line < 0 || line == KVXFER_TRTLLM_LINE)
        return; // a version kvxfer cannot read, or the built line's
    std::string builtFor = lineName(KVXFER_TRTLLM_LINE);
    std::string problem = std::string(wrapperName) + " was built for the plug-in interfaces of TensorRT-LLM's "
                          + builtFor + " line, but this process runs TensorRT-LLM " + release->version + " ("
                          + release->foundAt + ")"
                          + (line == 0 ? std::string(", older than any line kvxfer serves")
                                       : ", of the " + lineName(line) + " line, whose interfaces differ")
                          + ": the objects' vtables would not match";
    char const* skip = std::getenv("KVX_TRTLLM_SKIP_VERSION_CHECK");
    if (skip != nullptr && std::strcmp(skip, "1") == 0)
    {
        static std::once_flag warned;
        std::call_once(warned,
            [&] { std::fprintf(stderr, "kvxfer: WARNING: KVX_TRTLLM_SKIP_VERSION_CHECK=1: %s\n", problem.c_str()); });
        return;
    }
    std::string remedy =
        line == 0 ? std::string(
                        "Build the wrappers against that release's headers (cmake -DTRTLLM_INCLUDE_DIR=<TensorRT-LLM ")
                        + release->version + ">/cpp/include)"
                  : "Use the wrappers built for the " + lineName(line) + " line (lib/trtllm/" + lineName(line)
                        + "/ of a kvxfer install, cmake -DKVXFER_TRTLLM_LINE=" + lineName(line)
                        + "), or build them against that release's headers (cmake -DTRTLLM_INCLUDE_DIR=<TensorRT-LLM "
                        + release->version + ">/cpp/include)";
    throw std::runtime_error(
        "kvxfer: " + problem + ". " + remedy + ", or set KVX_TRTLLM_SKIP_VERSION_CHECK=1 to load them anyway");
#endif
}

int lineOfVersion(char const* version) noexcept
{
    try
    {
        auto key = version != nullptr ? releaseKey(version) : std::nullopt;
        return key ? lineOfRelease(*key) : -1;
    }
    catch (...)
    {
        return -1;
    }
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

bool infoLogsSilenced() noexcept
{
    char const* level = std::getenv("KVX_LOG");
    return level != nullptr && std::strcmp(level, "error") == 0;
}

void logBackendOnce(char const* wrapperName, char const* what, uint32_t backend)
{
    static std::once_flag once;
    std::call_once(once,
        [&]
        {
            if (infoLogsSilenced())
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

// For installers choosing a line's wrappers (kvxfer's `trtllm install`): the
// line of a TensorRT-LLM version, in kvxferLine.h's numbering (104 = 1.4);
// 0 before 1.0, -1 when the version cannot be read. Thread safety: any thread.
extern "C" __attribute__((visibility("default"))) int kvxfer_trtllm_line_of_release(char const* version) noexcept
{
    return kvxfer_trtllm::lineOfVersion(version);
}
