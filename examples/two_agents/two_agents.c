/* Two agents, one WRITE: "prefill" pushes a buffer into "decode" and attaches
 * a sync message that "decode" receives after the data has landed.
 *
 * Both agents live in this process to keep the example short. Between
 * processes, the only things that cross are two small values the decode side
 * sends to the prefill side over the caller's own channel (TensorRT-LLM puts
 * them in its request info): the agent's connection info ("ip:port" text)
 * and the kvx_memory_desc list of the memory it registered ({addr, len,
 * device_id} each). Everything else goes through kvxfer. */
#define _POSIX_C_SOURCE 200809L /* nanosleep */
#include <kvxfer.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define OK(call)                                                                                                       \
    do                                                                                                                 \
    {                                                                                                                  \
        kvx_status st_ = (call);                                                                                       \
        if (st_ != KVX_OK)                                                                                             \
        {                                                                                                              \
            fprintf(stderr, "%s: %s: %s\n", #call, kvx_status_str(st_), kvx_last_error());                             \
            exit(1);                                                                                                   \
        }                                                                                                              \
    } while (0)

enum
{
    LEN = 1 << 20
};

static kvx_agent* make_agent(const char* name)
{
    kvx_agent_config cfg;
    kvx_agent* agent = NULL;
    OK(kvx_agent_config_init(&cfg)); /* defaults first: backend from the environment, listener on */
    cfg.name = name;
    cfg.listen_ip = "127.0.0.1";
    OK(kvx_agent_create(&cfg, &agent));
    return agent;
}

int main(void)
{
    unsigned char* kv = malloc(LEN);         /* prefill's KV blocks */
    unsigned char* landing = calloc(1, LEN); /* decode's receive buffer */
    kvx_agent* prefill = make_agent("prefill");
    kvx_agent* decode = make_agent("decode");
    for (size_t i = 0; i < LEN; i++)
        kv[i] = (unsigned char)(i * 7 + 1);

    /* Decode side: register the receive buffer; publish connection info and the region. */
    kvx_memory_desc remote = {(uint64_t)(uintptr_t)landing, LEN, 0};
    kvx_bytes conn_info = {0};
    OK(kvx_agent_register_memory(decode, KVX_MEMORY_DRAM, &remote, 1));
    OK(kvx_agent_get_connection_info(decode, &conn_info)); /* NUL-terminated "ip:port" */

    /* Prefill side: register the source, load the peer from what decode sent, WRITE. */
    kvx_memory_desc local = {(uint64_t)(uintptr_t)kv, LEN, 0};
    OK(kvx_agent_register_memory(prefill, KVX_MEMORY_DRAM, &local, 1));
    OK(kvx_agent_load_remote_by_connection_info(prefill, "decode", (const char*)conn_info.data, KVX_TIMEOUT_DEFAULT));
    kvx_bytes_free(&conn_info);

    static const char msg[] = "request 42 done";
    kvx_transfer_request req = {.op = KVX_OP_WRITE,
        .src_type = KVX_MEMORY_DRAM,
        .src_descs = &local,
        .dst_type = KVX_MEMORY_DRAM,
        .dst_descs = &remote,
        .count = 1,
        .remote_name = "decode",
        .sync_message = (const uint8_t*)msg,
        .sync_message_len = strlen(msg),
        .has_sync_message = true};
    kvx_xfer* xfer = NULL;
    kvx_transfer_state state = KVX_TRANSFER_IN_PROGRESS;
    OK(kvx_agent_submit(prefill, &req, &xfer));
    OK(kvx_xfer_wait(xfer, KVX_TIMEOUT_DEFAULT, &state)); /* at most until the transfer's deadline */
    kvx_xfer_destroy(xfer);
    if (state != KVX_TRANSFER_SUCCESS)
        return 1;

    /* Decode side: the sync message arrives after the data, so once it is here the data can be read. */
    int got = 0;
    for (int tries = 0; !got && tries < 2000; tries++) /* up to about 2 s */
    {
        kvx_notification_list* list = NULL;
        OK(kvx_agent_get_notifications(decode, &list));
        for (size_t n = 0; n < kvx_notification_list_len(list); n++)
        {
            const char* sender;
            const uint8_t* text;
            size_t len;
            OK(kvx_notification_list_get(list, n, &sender, &text, &len));
            got |= strcmp(sender, "prefill") == 0 && len == strlen(msg) && memcmp(text, msg, len) == 0;
        }
        kvx_notification_list_free(list);
        nanosleep(&(struct timespec){0, 1000000}, NULL);
    }
    int same = memcmp(kv, landing, LEN) == 0;
    printf("WRITE of %d bytes: %s, sync message %s\n", LEN, same ? "data verified" : "DATA DIFFERS",
        got ? "received" : "MISSING");

    kvx_agent_destroy(prefill);
    kvx_agent_destroy(decode);
    free(kv);
    free(landing);
    return same && got ? 0 : 1;
}
