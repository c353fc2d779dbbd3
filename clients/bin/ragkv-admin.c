/* ragkv-admin — operator CLI for a running ragkvd. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ragkv/alloc.h"
#include "ragkv/client.h"
#include "ragkv/service.h"
#include "ragkv/version.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: ragkv-admin [--host HOST] [--http-port N] [--timeout MS] COMMAND\n\n"
            "Commands:\n"
            "  health     ask /healthz; exit 0 when the daemon answers OK\n"
            "  metrics    print the daemon's Prometheus metrics\n"
            "  version    print this tool's version\n\n"
            "Defaults: --host 127.0.0.1 --http-port %d --timeout 2000.\n"
            "Tenant, quota and namespace commands arrive with the admin protocol.\n",
            SVC_DEFAULT_HTTP_PORT);
}

int main(int argc, char **argv)
{
    const char *host = "127.0.0.1";
    int port = SVC_DEFAULT_HTTP_PORT, timeout = 2000;
    int i = 1;
    for (; i < argc && !strncmp(argv[i], "--", 2); i++) {
        if (!strcmp(argv[i], "--help")) {
            usage(stdout);
            return 0;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "ragkv-admin: %s needs a value\n", argv[i]);
            return 2;
        }
        if (!strcmp(argv[i], "--host"))
            host = argv[++i];
        else if (!strcmp(argv[i], "--http-port"))
            port = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--timeout"))
            timeout = atoi(argv[++i]);
        else {
            fprintf(stderr, "ragkv-admin: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    if (i >= argc) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[i];
    if (!strcmp(cmd, "version")) {
        printf("ragkv-admin %s\n", RAGKV_VERSION);
        return 0;
    }
    const char *path = !strcmp(cmd, "health") ? "/healthz" : !strcmp(cmd, "metrics") ? "/metrics" : NULL;
    if (!path) {
        fprintf(stderr, "ragkv-admin: unknown command '%s'\n", cmd);
        usage(stderr);
        return 2;
    }
    int code = 0;
    char *body = NULL;
    rk_status st = ragkv_http_get(host, port, path, timeout, &code, &body);
    if (st != RK_OK) {
        fprintf(stderr, "ragkv-admin: %s:%d: %s (%s)\n", host, port, rk_strerror(st), rk_error_msg());
        return 1;
    }
    fputs(body, stdout);
    rk_free(body);
    return code == 200 ? 0 : 1;
}
