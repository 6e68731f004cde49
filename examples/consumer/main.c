/* Minimal kvxfer consumer: prints the library version and the backend that
 * KVX_BACKEND_AUTO resolves to in this environment. */
#include <kvxfer.h>
#include <stdio.h>

int main(void)
{
    uint32_t backend = KVX_BACKEND_AUTO;
    kvx_status st;

    printf("kvxfer %s (header %s)\n", kvx_version(), KVXFER_VERSION_STRING);
    st = kvx_backend_resolve(KVX_BACKEND_AUTO, &backend);
    if (st != KVX_OK)
    {
        fprintf(stderr, "kvx_backend_resolve: %s: %s\n", kvx_status_str(st), kvx_last_error());
        return 1;
    }
    printf("backend: %s\n", backend == KVX_BACKEND_UCX ? "UCX" : backend == KVX_BACKEND_NIXL ? "NIXL" : "?");
    return 0;
}
