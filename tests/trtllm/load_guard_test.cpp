// The wrappers' load guard: loaded into a TensorRT-LLM whose plug-in
// interfaces are not those they were built for, they refuse to create
// objects, naming both sides and the way out; KVX_TRTLLM_SKIP_VERSION_CHECK=1
// overrides. A stand-in libtensorrt_llm.so with a version.py beside it plays
// the installed TensorRT-LLM (each test runs in its own process).
#include "trtllm_test_util.hpp"

using namespace trtllm_test;

namespace
{

void loadFakeTensorrtLlm(char const* path)
{
    ASSERT_NE(::dlopen(path, RTLD_NOW | RTLD_GLOBAL), nullptr) << ::dlerror();
}

std::string refusal(std::function<void()> const& make)
{
    try
    {
        make();
    }
    catch (std::exception const& e)
    {
        return e.what();
    }
    return {};
}

} // namespace

TEST(LoadGuard, RefusesAReleaseOfAnotherLine)
{
    ASSERT_NO_FATAL_FAILURE(loadFakeTensorrtLlm(KVX_FAKE_TRTLLM_OLD));
    for (auto const& [wrapper, make] :
        std::vector<std::pair<std::string, std::function<void()>>>{
            {kNixlWrapper, [] { makeTransferAgent(uniqueName("guarded")); }},
            {kUcxWrapper, [] { makeUcxConnectionManager(); }},
        })
    {
        std::string what = refusal(make);
        ASSERT_FALSE(what.empty()) << wrapper << " created an object inside TensorRT-LLM 1.2.0";
        EXPECT_NE(what.find(wrapper), std::string::npos) << what;
        EXPECT_NE(what.find("TensorRT-LLM 1.2.0"), std::string::npos) << what;
        EXPECT_NE(what.find("1.4"), std::string::npos) << what;
        EXPECT_NE(what.find("-DTRTLLM_INCLUDE_DIR="), std::string::npos) << what;
        EXPECT_NE(what.find("KVX_TRTLLM_SKIP_VERSION_CHECK=1"), std::string::npos) << what;
    }
    ScopedEnv skip("KVX_TRTLLM_SKIP_VERSION_CHECK", "1");
    EXPECT_NO_THROW(makeTransferAgent(uniqueName("forced")));
    EXPECT_NO_THROW(makeUcxConnectionManager());
}

TEST(LoadGuard, AcceptsAReleaseOfItsLine)
{
    ASSERT_NO_FATAL_FAILURE(loadFakeTensorrtLlm(KVX_FAKE_TRTLLM_NEW));
    EXPECT_NO_THROW(makeTransferAgent(uniqueName("accepted")));
    EXPECT_NO_THROW(makeUcxConnectionManager());
}
