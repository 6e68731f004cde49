// The suite runs twice: with the wrappers found by file name (LD_LIBRARY_PATH,
// as TensorRT-LLM's RPATH finds them in tensorrt_llm/libs/) and with them
// reachable only through LD_PRELOAD. This checks the process really is in the
// mode CTest says (KVX_TRTLLM_LOAD_MODE), and that dlopen by bare name then
// returns the kvxfer wrapper from KVX_TRTLLM_WRAPPER_DIR.
#include "trtllm_test_util.hpp"

#include <climits>
#include <cstdlib>

using namespace trtllm_test;

namespace
{

std::string env(char const* name)
{
    char const* v = std::getenv(name);
    return v ? v : "";
}

std::string realPath(std::string const& path)
{
    char buf[PATH_MAX];
    return ::realpath(path.c_str(), buf) ? std::string(buf) : path;
}

std::string folderOf(std::string const& path)
{
    auto slash = path.rfind('/');
    return slash == std::string::npos ? "." : path.substr(0, slash);
}

void checkMode(char const* library, char const* factory)
{
    std::string mode = env("KVX_TRTLLM_LOAD_MODE");
    std::string dir = env("KVX_TRTLLM_WRAPPER_DIR");
    ASSERT_TRUE(mode == "path" || mode == "preload") << "KVX_TRTLLM_LOAD_MODE='" << mode << "'";
    ASSERT_FALSE(dir.empty());
    bool loadedBefore = ::dlopen(library, RTLD_LAZY | RTLD_NOLOAD) != nullptr;
    if (mode == "preload")
    {
        EXPECT_TRUE(loadedBefore) << library << " is not preloaded";
        // Nothing but LD_PRELOAD may make it reachable.
        EXPECT_EQ(env("LD_LIBRARY_PATH").find(dir), std::string::npos);
    }
    else
    {
        EXPECT_FALSE(loadedBefore) << library << " was loaded before the first dlopen";
        EXPECT_EQ(env("LD_PRELOAD").find(library), std::string::npos);
    }
    void* fn = wrapperSymbol(library, factory);
    Dl_info info{};
    ASSERT_NE(::dladdr(fn, &info), 0);
    EXPECT_EQ(realPath(folderOf(info.dli_fname)), realPath(dir)) << factory << " came from " << info.dli_fname;
}

} // namespace

TEST(LoadMode, UcxWrapper)
{
    checkMode(kUcxWrapper, "makeUcxConnectionManager");
}

TEST(LoadMode, NixlWrapper)
{
    checkMode(kNixlWrapper, "createNixlTransferAgent");
    EXPECT_NE(wrapperSymbol(kNixlWrapper, "createNixlLoopbackAgent"), nullptr);
}
