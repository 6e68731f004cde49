// main() of the suite. CTest sets one variable, KVX_TRTLLM_RUN=<backend>:<mode>:<wrapper dir>
// (one, because gtest_discover_tests cannot pass a list of variables); this
// turns it into the environment the run needs and re-executes the program,
// so the dynamic loader sees LD_PRELOAD / LD_LIBRARY_PATH from the start:
//   backend ucx | nixl   -> TRTLLM_USE_UCX_KVCACHE / TRTLLM_USE_NIXL_KVCACHE
//   mode    path         -> wrapper dir first on LD_LIBRARY_PATH, no LD_PRELOAD
//           preload      -> both wrappers in LD_PRELOAD, wrapper dir off LD_LIBRARY_PATH
#include <gtest/gtest.h>

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>

namespace
{

std::string withoutEntry(std::string const& pathList, std::string const& entry)
{
    std::stringstream in(pathList);
    std::string item;
    std::string out;
    while (std::getline(in, item, ':'))
        if (!item.empty() && item != entry)
            out += (out.empty() ? "" : ":") + item;
    return out;
}

// Returns false (after printing why) when KVX_TRTLLM_RUN is malformed.
bool configure(std::string const& run)
{
    auto first = run.find(':');
    auto second = run.find(':', first == std::string::npos ? first : first + 1);
    if (first == std::string::npos || second == std::string::npos)
    {
        std::fprintf(stderr, "KVX_TRTLLM_RUN='%s': expected <backend>:<mode>:<dir>\n", run.c_str());
        return false;
    }
    std::string backend = run.substr(0, first);
    std::string mode = run.substr(first + 1, second - first - 1);
    std::string dir = run.substr(second + 1);
    if ((backend != "ucx" && backend != "nixl") || (mode != "path" && mode != "preload") || dir.empty())
    {
        std::fprintf(stderr, "KVX_TRTLLM_RUN='%s': backend ucx|nixl, mode path|preload\n", run.c_str());
        return false;
    }
    // UCX wins when both are "1", so the other variable is explicitly off.
    ::setenv("TRTLLM_USE_UCX_KVCACHE", backend == "ucx" ? "1" : "0", 1);
    ::setenv("TRTLLM_USE_NIXL_KVCACHE", backend == "nixl" ? "1" : "0", 1);
    char const* ldPath = std::getenv("LD_LIBRARY_PATH");
    std::string rest = withoutEntry(ldPath ? ldPath : "", dir);
    if (mode == "path")
    {
        ::setenv("LD_LIBRARY_PATH", (dir + (rest.empty() ? "" : ":" + rest)).c_str(), 1);
        ::unsetenv("LD_PRELOAD");
    }
    else
    {
        ::setenv("LD_LIBRARY_PATH", rest.c_str(), 1);
        std::string preload = dir + "/libtensorrt_llm_ucx_wrapper.so:" + dir + "/libtensorrt_llm_nixl_wrapper.so";
        ::setenv("LD_PRELOAD", preload.c_str(), 1);
    }
    ::setenv("KVX_TRTLLM_LOAD_MODE", mode.c_str(), 1);
    ::setenv("KVX_TRTLLM_WRAPPER_DIR", dir.c_str(), 1);
    return true;
}

} // namespace

int main(int argc, char** argv)
{
    char const* run = std::getenv("KVX_TRTLLM_RUN");
    if (run != nullptr && std::getenv("KVX_TRTLLM_CONFIGURED") == nullptr)
    {
        if (!configure(run))
            return 2;
        ::setenv("KVX_TRTLLM_CONFIGURED", "1", 1);
        ::execv("/proc/self/exe", argv);
        std::perror("execv /proc/self/exe");
        return 2;
    }
    ::testing::InitGoogleTest(&argc, argv);
    return RUN_ALL_TESTS();
}
