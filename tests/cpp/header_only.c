/* The installed header must compile on its own as strict C99
 * (-std=c99 -pedantic -Werror), and link against the installed library. */
#include <kvxfer.h>

static int str_eq(const char* a, const char* b)
{
    while (*a && *a == *b)
    {
        ++a;
        ++b;
    }
    return *a == *b;
}

int main(void)
{
    kvx_agent_config agent_cfg;
    kvx_cm_config cm_cfg;
    kvx_memory_desc desc = {0, 0, 0};
    kvx_transfer_request req;
    kvx_bytes bytes = {NULL, 0};
    kvx_status st = KVX_OK;
    (void)desc;
    (void)req;
    if (kvx_agent_config_init(&agent_cfg) != KVX_OK || agent_cfg.struct_size != sizeof agent_cfg)
        return 1;
    if (kvx_cm_config_init(&cm_cfg) != KVX_OK || cm_cfg.struct_size != sizeof cm_cfg)
        return 2;
    if (!str_eq(kvx_version(), KVXFER_VERSION_STRING))
        return 3;
    if (!str_eq(kvx_status_str(st), "KVX_OK"))
        return 4;
    kvx_bytes_free(&bytes);
    return 0;
}
