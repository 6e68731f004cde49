// Stands in for libtensorrt_llm.so in the load-guard tests: the guard only
// needs a library of that name inside a tensorrt_llm/libs folder whose
// version.py names a release.
extern "C" int kvxfer_test_fake_tensorrt_llm()
{
    return 0;
}
