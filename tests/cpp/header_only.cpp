// The installed header must compile on its own as C++17 (-pedantic -Werror):
// extern "C" linkage, no C-only constructs.
#include <kvxfer.h>

#include <type_traits>

static_assert(std::is_enum<kvx_status>::value, "kvx_status is an enum");
static_assert(sizeof(kvx_memory_desc) == 24, "kvx_memory_desc: u64 addr, u64 len, u32 device_id (padded)");
static_assert(KVX_TIMEOUT_DEFAULT < 0, "negative timeout means default");
static_assert(KVXFER_VERSION_MAJOR >= 0 && KVXFER_VERSION_MINOR >= 0 && KVXFER_VERSION_PATCH >= 0, "version macros");

int main()
{
    kvx_agent_config cfg{};
    if (kvx_agent_config_init(&cfg) != KVX_OK)
        return 1;
    const char* v = kvx_version();
    const char* e = KVXFER_VERSION_STRING;
    while (*v && *v == *e)
    {
        ++v;
        ++e;
    }
    return *v == *e ? 0 : 2;
}
