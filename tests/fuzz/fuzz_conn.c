/*
 * fuzz_conn — the daemon's whole request path over a real socket. An in-process ragkvd (no
 * model, embedded metadata, 1 s frame timeout) receives each input as the byte stream of a
 * tenant connection that has already authenticated: framing (conn.c's incremental reader),
 * payload decoding, dispatch, the store calls and the error paths all run. Admin operations
 * stay disabled: the fuzzer never holds the admin credential, so they are refused.
 * The input's first byte picks how the stream is cut into writes: 0 whole, 1 byte by byte,
 * 2 at pseudo-random points seeded by the second byte; the rest is the stream. The server
 * must answer or close, never crash, leak or read out of bounds.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "ragkv/bytes.h"
#include "ragkv/client.h"
#include "ragkv/proto.h"
#include "ragkv/service.h"

static svc_server *srv;     /* the in-process daemon, started on the first input */
static pthread_t srv_thread;
static int srv_port;
static char tenant_token[256];
static char data_dir[256];

static void *serve(void *arg)
{
    (void)arg;
    svc_server_run(srv);
    return NULL;
}

/* At exit: stop the daemon and free it, so leak checkers see a clean shutdown. */
static void stop_server(void)
{
    svc_server_stop(srv);
    pthread_join(srv_thread, NULL);
    svc_server_close(srv);
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", data_dir);
    if (system(cmd) != 0)
        fprintf(stderr, "fuzz_conn: could not remove %s\n", data_dir);
}

static void start_server(void)
{
    const char *t = getenv("TMPDIR");
    snprintf(data_dir, sizeof(data_dir), "%s/ragkv-fuzz-XXXXXX", t && *t ? t : "/tmp");
    if (!mkdtemp(data_dir))
        abort();
    svc_config cfg;
    svc_config_defaults(&cfg);
    cfg.port = 0;
    cfg.http_port = -1;
    cfg.workers = 1;
    cfg.frame_timeout_s = 1;
    snprintf(cfg.data_dir, sizeof(cfg.data_dir), "%s", data_dir);
    snprintf(cfg.log_level, sizeof(cfg.log_level), "error");
    if (svc_server_open(&cfg, &srv) != RK_OK || pthread_create(&srv_thread, NULL, serve, NULL) != 0)
        abort();
    srv_port = svc_server_port(srv);
    /* one tenant, created with the admin credential the daemon wrote */
    char path[300], adm[256] = "";
    snprintf(path, sizeof(path), "%s/admin.token", data_dir);
    FILE *f = fopen(path, "r");
    if (!f || !fgets(adm, sizeof(adm), f))
        abort();
    fclose(f);
    adm[strcspn(adm, "\n")] = '\0';
    ragkv_conn *c;
    if (ragkv_connect("127.0.0.1", srv_port, 10000, &c) != RK_OK || ragkv_auth(c, adm, NULL, 0) != RK_OK ||
        ragkv_admin_tenant_create(c, "fz", 0, 64, 0, tenant_token, sizeof(tenant_token)) != RK_OK)
        abort();
    ragkv_close(c);
    atexit(stop_server);
}

/* Write all of p, ignoring errors (the server may close first). */
static void put_all(int fd, const uint8_t *p, size_t n)
{
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w <= 0)
            return;
        p += w;
        n -= (size_t)w;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!srv)
        start_server();
    if (size < 2)
        return 0;
    unsigned mode = data[0] % 3, seed = data[1];
    data += 2;
    size -= 2;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)srv_port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0)
        abort();
    /* AUTH as the tenant, then the fuzzer's bytes */
    rk_buf b = RK_BUF_INIT;
    uint8_t hdr[RK_PROTO_HDR_SIZE];
    rk_buf_put_str(&b, tenant_token);
    rk_proto_hdr h = {.version = RK_PROTO_VERSION, .type = RK_PT_REQUEST, .opcode = RK_OP_AUTH,
                      .request_id = 1, .length = (uint32_t)b.len};
    rk_proto_hdr_encode(&h, hdr);
    put_all(fd, hdr, sizeof(hdr));
    put_all(fd, b.data, b.len);
    rk_buf_free(&b);
    for (size_t off = 0; off < size;) {
        size_t n = size - off;
        if (mode == 1)
            n = 1;
        else if (mode == 2) {
            seed = seed * 1103515245u + 12345u;
            n = 1 + (seed >> 16) % (n < 64 ? n : 64);
        }
        put_all(fd, data + off, n);
        off += n;
    }
    shutdown(fd, SHUT_WR);
    /* read whatever comes back until the server closes (bounded: it must not hang) */
    uint8_t sink[4096];
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 5000) <= 0) {
            fprintf(stderr, "fuzz_conn: the server neither answered nor closed within 5 s\n");
            abort();
        }
        if (recv(fd, sink, sizeof(sink), 0) <= 0)
            break;
    }
    close(fd);
    return 0;
}
