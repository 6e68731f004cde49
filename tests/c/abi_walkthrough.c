/* Every part of the C API once, from C, for valgrind and the sanitizers:
 * two agents (WRITE, READ back, sync message, notify, check, invalidate),
 * two connection managers (send, recv, recv_connect), error paths, cleanup.
 * Exits 0 when every check passes. Built by scripts/stress/sanitizers.sh. */
#include <kvxfer.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(cond)                                                                                                    \
    do                                                                                                                 \
    {                                                                                                                  \
        if (!(cond))                                                                                                   \
        {                                                                                                              \
            fprintf(stderr, "%s:%d: %s failed: %s\n", __FILE__, __LINE__, #cond, kvx_last_error());                    \
            exit(1);                                                                                                   \
        }                                                                                                              \
    } while (0)
#define OK(call) CHECK((call) == KVX_OK)

enum
{
    SIZE = 1 << 20
};

static kvx_agent* make_agent(const char* name)
{
    kvx_agent_config cfg;
    kvx_agent* agent = NULL;
    OK(kvx_agent_config_init(&cfg));
    cfg.name = name;
    cfg.listen_ip = "127.0.0.1";
    cfg.backend = KVX_BACKEND_UCX;
    cfg.timeout_ms = 20000;
    OK(kvx_agent_create(&cfg, &agent));
    return agent;
}

static kvx_cm* make_cm(void)
{
    kvx_cm_config cfg;
    kvx_cm* cm = NULL;
    OK(kvx_cm_config_init(&cfg));
    cfg.listen_ip = "127.0.0.1";
    cfg.backend = KVX_BACKEND_UCX;
    OK(kvx_cm_create(&cfg, &cm));
    return cm;
}

static void transfer(kvx_agent* from, uint32_t op, const kvx_memory_desc* local, const kvx_memory_desc* remote,
    const char* to, const char* sync)
{
    kvx_transfer_request req;
    kvx_xfer* x = NULL;
    kvx_transfer_state state = KVX_TRANSFER_IN_PROGRESS;
    kvx_bytes status = {0};
    memset(&req, 0, sizeof req);
    req.op = op;
    req.src_type = KVX_MEMORY_DRAM;
    req.src_descs = local;
    req.dst_type = KVX_MEMORY_DRAM;
    req.dst_descs = remote;
    req.count = 1;
    req.remote_name = to;
    if (sync)
    {
        req.sync_message = (const uint8_t*)sync;
        req.sync_message_len = strlen(sync);
        req.has_sync_message = true;
    }
    OK(kvx_agent_submit(from, &req, &x));
    OK(kvx_xfer_wait(x, 20000, &state));
    OK(kvx_xfer_last_status(x, &status));
    CHECK(state == KVX_TRANSFER_SUCCESS);
    kvx_bytes_free(&status);
    kvx_xfer_destroy(x);
}

int main(void)
{
    unsigned char *src = malloc(SIZE), *dst = calloc(1, SIZE), *back = calloc(1, SIZE);
    kvx_agent *a = make_agent("walk-a"), *b = make_agent("walk-b");
    kvx_memory_desc ls = {(uint64_t)(uintptr_t)src, SIZE, 0}, lb = {(uint64_t)(uintptr_t)back, SIZE, 0};
    kvx_memory_desc rd = {(uint64_t)(uintptr_t)dst, SIZE, 0}, outside = {(uint64_t)(uintptr_t)dst + 1, SIZE, 0};
    kvx_bytes info = {0}, desc = {0};
    kvx_notification_list* list = NULL;
    bool yes = false;
    size_t i;
    for (i = 0; i < SIZE; i++)
        src[i] = (unsigned char)(i * 31 + 7);

    OK(kvx_agent_register_memory(a, KVX_MEMORY_DRAM, &ls, 1));
    OK(kvx_agent_register_memory(a, KVX_MEMORY_DRAM, &lb, 1));
    OK(kvx_agent_register_memory(b, KVX_MEMORY_DRAM, &rd, 1));
    OK(kvx_agent_get_connection_info(b, &info));
    {
        char* text = malloc(info.len + 1);
        memcpy(text, info.data, info.len);
        text[info.len] = 0;
        OK(kvx_agent_load_remote_by_connection_info(a, "walk-b", text, 20000));
        free(text);
    }
    kvx_bytes_free(&info);
    OK(kvx_agent_get_local_desc(a, &desc));
    OK(kvx_agent_load_remote(b, "walk-a", desc.data, desc.len));
    kvx_bytes_free(&desc);

    transfer(a, KVX_OP_WRITE, &ls, &rd, "walk-b", "done");
    transfer(a, KVX_OP_READ, &lb, &rd, "walk-b", NULL);
    CHECK(memcmp(src, dst, SIZE) == 0 && memcmp(src, back, SIZE) == 0);
    OK(kvx_agent_notify(b, "walk-a", (const uint8_t*)"hello", 5));
    OK(kvx_agent_check_remote_descs(a, "walk-b", KVX_MEMORY_DRAM, &rd, 1, &yes));
    CHECK(yes);
    OK(kvx_agent_check_remote_descs(a, "walk-b", KVX_MEMORY_DRAM, &outside, 1, &yes));
    CHECK(!yes);
    {
        kvx_transfer_request req;
        kvx_xfer* x = NULL;
        memset(&req, 0, sizeof req);
        req.op = KVX_OP_WRITE;
        req.src_descs = &ls;
        req.dst_descs = &outside;
        req.count = 1;
        req.remote_name = "walk-b";
        CHECK(kvx_agent_submit(a, &req, &x) == KVX_ERR_NOT_REGISTERED);
        req.op = 77;
        CHECK(kvx_agent_submit(a, &req, &x) == KVX_ERR_INVALID_ARGUMENT);
        CHECK(kvx_agent_submit(a, NULL, &x) == KVX_ERR_INVALID_ARGUMENT);
    }
    /* Notifications: the sync message on b, "hello" on a. */
    {
        size_t got = 0;
        int tries;
        for (tries = 0; tries < 2000 && got == 0; tries++)
        {
            OK(kvx_agent_get_notifications(b, &list));
            got = kvx_notification_list_len(list);
            if (got == 1)
            {
                const char* sender;
                const uint8_t* msg;
                size_t len;
                OK(kvx_notification_list_get(list, 0, &sender, &msg, &len));
                CHECK(strcmp(sender, "walk-a") == 0 && len == 4 && memcmp(msg, "done", 4) == 0);
                CHECK(kvx_notification_list_get(list, 1, &sender, &msg, &len) == KVX_ERR_INVALID_ARGUMENT);
            }
            kvx_notification_list_free(list);
        }
        CHECK(got == 1);
    }
    OK(kvx_agent_invalidate_remote(a, "walk-b"));
    CHECK(kvx_agent_invalidate_remote(a, "walk-b") == KVX_ERR_NOT_FOUND);
    OK(kvx_agent_deregister_memory(a, KVX_MEMORY_DRAM, &ls, 1));

    /* Connection managers. */
    {
        kvx_cm *c1 = make_cm(), *c2 = make_cm();
        kvx_bytes addr = {0};
        const kvx_conn *conn = NULL, *back_conn = NULL;
        char text[128], buf[64];
        const char* addrs[1];
        OK(kvx_cm_get_local_address(c2, &addr));
        CHECK(addr.len < sizeof text);
        memcpy(text, addr.data, addr.len);
        text[addr.len] = 0;
        kvx_bytes_free(&addr);
        addrs[0] = text;
        OK(kvx_cm_get_connections(c1, addrs, 1, 20000, &conn));
        OK(kvx_conn_send(conn, 5, "ping", 4, 20000));
        OK(kvx_cm_recv_connect(c2, 5, buf, 4, 20000, &back_conn));
        CHECK(memcmp(buf, "ping", 4) == 0);
        OK(kvx_conn_send(back_conn, 6, "pong", 4, 20000));
        OK(kvx_conn_recv(conn, 6, buf, 4, 20000));
        CHECK(memcmp(buf, "pong", 4) == 0);
        CHECK(kvx_conn_recv(conn, 7, buf, 4, 50) == KVX_ERR_TIMEOUT);
        OK(kvx_cm_shutdown(c1));
        kvx_cm_destroy(c1);
        kvx_cm_destroy(c2);
    }
    kvx_agent_destroy(a);
    kvx_agent_destroy(b);
    free(src);
    free(dst);
    free(back);
    puts("abi_walkthrough: all checks passed");
    return 0;
}
