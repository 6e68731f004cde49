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

// Both wrappers' factories, as TensorRT-LLM calls them.
std::vector<std::pair<std::string, std::function<void()>>> factories()
{
    return {
        {kNixlWrapper, [] { makeTransferAgent(uniqueName("guarded")); }},
        {kUcxWrapper, [] { makeUcxConnectionManager(); }},
    };
}

std::string const kBuiltLine =
    std::to_string(KVXFER_TRTLLM_LINE / 100) + "." + std::to_string(KVXFER_TRTLLM_LINE % 100);

TEST(LoadGuard, RefusesAReleaseOfAnotherLine)
{
    ASSERT_NO_FATAL_FAILURE(loadFakeTensorrtLlm(KVX_FAKE_TRTLLM_OTHER));
    std::string const release = KVX_FAKE_TRTLLM_OTHER_VERSION;
    std::string const line = KVX_FAKE_TRTLLM_OTHER_LINE;
    for (auto const& [wrapper, make] : factories())
    {
        std::string what = refusal(make);
        ASSERT_FALSE(what.empty()) << wrapper << " created an object inside TensorRT-LLM " << release;
        EXPECT_NE(what.find(wrapper), std::string::npos) << what;
        EXPECT_NE(what.find("TensorRT-LLM " + release), std::string::npos) << what;
        EXPECT_NE(what.find("TensorRT-LLM's " + kBuiltLine + " line"), std::string::npos) << what;
        EXPECT_NE(what.find("of the " + line + " line"), std::string::npos) << what;
        EXPECT_NE(what.find("lib/trtllm/" + line + "/"), std::string::npos) << what;
        EXPECT_NE(what.find("-DKVXFER_TRTLLM_LINE=" + line), std::string::npos) << what;
        EXPECT_NE(what.find("-DTRTLLM_INCLUDE_DIR="), std::string::npos) << what;
        EXPECT_NE(what.find("KVX_TRTLLM_SKIP_VERSION_CHECK=1"), std::string::npos) << what;
    }
    ScopedEnv skip("KVX_TRTLLM_SKIP_VERSION_CHECK", "1");
    EXPECT_NO_THROW(makeTransferAgent(uniqueName("forced")));
    EXPECT_NO_THROW(makeUcxConnectionManager());
}

// TensorRT-LLM before 1.0 (its own, older plug-in interfaces): no line serves it.
TEST(LoadGuard, RefusesAReleaseBeforeAnyLine)
{
    ASSERT_NO_FATAL_FAILURE(loadFakeTensorrtLlm(KVX_FAKE_TRTLLM_ANCIENT));
    for (auto const& [wrapper, make] : factories())
    {
        std::string what = refusal(make);
        ASSERT_FALSE(what.empty()) << wrapper << " created an object inside TensorRT-LLM 0.21.0";
        EXPECT_NE(what.find("older than any line kvxfer serves"), std::string::npos) << what;
        EXPECT_NE(what.find("-DTRTLLM_INCLUDE_DIR="), std::string::npos) << what;
    }
}

TEST(LoadGuard, AcceptsAReleaseOfItsLine)
{
    ASSERT_NO_FATAL_FAILURE(loadFakeTensorrtLlm(KVX_FAKE_TRTLLM_OWN));
    EXPECT_NO_THROW(makeTransferAgent(uniqueName("accepted")));
    EXPECT_NO_THROW(makeUcxConnectionManager());
}
