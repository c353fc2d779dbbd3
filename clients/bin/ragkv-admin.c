/*
 * ragkv-admin — operator CLI for a running ragkvd (on libragkv).
 *
 * Exit status: 0 success; 1 the daemon refused or failed the operation; 2 usage error;
 * 3 the daemon could not be reached or the admin credential was refused.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ragkv/alloc.h"
#include "ragkv/client.h"
#include "ragkv/hash.h"
#include "ragkv/service.h"
#include "ragkv/version.h"

enum { EXIT_OPFAIL = 1, EXIT_USAGE = 2, EXIT_CONN = 3 };

struct opts {
    const char *host;
    int port, http_port, timeout_ms;
    const char *token_file;
    int json;
    uint64_t quota_bytes, quota_chunks;
    int evict;
};

static void usage(FILE *f)
{
    fprintf(f,
            "usage: ragkv-admin [OPTIONS] COMMAND [ARGS]\n\n"
            "Commands:\n"
            "  health                       ask /healthz; exit 0 when the daemon answers OK\n"
            "  metrics                      print the daemon's Prometheus metrics\n"
            "  tenant create NAME [--quota-bytes N] [--quota-chunks N] [--evict]\n"
            "                               create a tenant and print its token (shown only once)\n"
            "  tenant delete NAME           delete a tenant's credential\n"
            "  tenant list                  list tenants with usage and quotas\n"
            "  token rotate NAME            issue a new token for NAME; the old one stops working\n"
            "  quota get NAME               a tenant's quota and usage\n"
            "  quota set NAME [--quota-bytes N] [--quota-chunks N] [--evict]\n"
            "                               change a tenant's quota (0 = unlimited)\n"
            "  grant NAMESPACE TENANT       let TENANT read the shared corpus NAMESPACE\n"
            "  revoke NAMESPACE TENANT      stop it\n"
            "  inspect NAMESPACE KEY        a chunk's record (KEY: 64 hex digits)\n"
            "  stats [TENANT]               per tenant: usage, requests, hit rate, TTFT p50/p99\n"
            "  evict                        remove expired chunks and enforce the disk budget now\n"
            "  flush                        write buffered hit counts, collect orphan blobs\n"
            "  config                       print the daemon's effective configuration\n"
            "  shutdown                     shut the daemon down cleanly\n"
            "  version                      print this tool's version\n\n"
            "Options:\n"
            "  --host H          daemon address (default 127.0.0.1)\n"
            "  --port N          protocol port (default %d)\n"
            "  --http-port N     HTTP port for health and metrics (default %d)\n"
            "  --token-file F    admin credential file (default ./var/admin.token, or\n"
            "                    $RAGKV_ADMIN_TOKEN when set)\n"
            "  --timeout MS      per-call timeout (default 5000)\n"
            "  --json            machine-readable output\n\n"
            "Exit status: 0 ok, 1 operation failed, 2 usage error, 3 daemon unreachable or\n"
            "credential refused.\n",
            SVC_DEFAULT_PORT, SVC_DEFAULT_HTTP_PORT);
}

static int parse_u64(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-')
        return -1;
    *out = v;
    return 0;
}

static int http_cmd(const struct opts *o, const char *path)
{
    int code = 0;
    char *body = NULL;
    rk_status st = ragkv_http_get(o->host, o->http_port, path, o->timeout_ms, &code, &body);
    if (st != RK_OK) {
        fprintf(stderr, "ragkv-admin: %s:%d: %s (%s)\n", o->host, o->http_port, rk_strerror(st), rk_error_msg());
        return EXIT_CONN;
    }
    fputs(body, stdout);
    rk_free(body);
    return code == 200 ? 0 : EXIT_OPFAIL;
}

/* Connect and authenticate with the admin credential. */
static int admin_connect(const struct opts *o, ragkv_conn **out)
{
    char token[256] = "";
    const char *env = getenv("RAGKV_ADMIN_TOKEN");
    if (env && *env && !o->token_file) {
        snprintf(token, sizeof(token), "%s", env);
    } else {
        const char *path = o->token_file ? o->token_file : "./var/admin.token";
        FILE *f = fopen(path, "r");
        if (!f) {
            fprintf(stderr, "ragkv-admin: cannot read the admin credential %s: %s\n"
                            "  (it is DATA_DIR/admin.token of the daemon; pass --token-file)\n",
                    path, strerror(errno));
            return EXIT_CONN;
        }
        if (!fgets(token, sizeof(token), f))
            token[0] = '\0';
        fclose(f);
        token[strcspn(token, "\r\n")] = '\0';
    }
    rk_status st = ragkv_connect(o->host, o->port, o->timeout_ms, out);
    if (st != RK_OK) {
        fprintf(stderr, "ragkv-admin: %s:%d: %s (%s)\n", o->host, o->port, rk_strerror(st), rk_error_msg());
        return EXIT_CONN;
    }
    if ((st = ragkv_auth(*out, token, NULL, 0)) != RK_OK) {
        fprintf(stderr, "ragkv-admin: admin credential refused: %s\n", rk_error_msg());
        ragkv_close(*out);
        return EXIT_CONN;
    }
    return 0;
}

static int fail(rk_status st)
{
    fprintf(stderr, "ragkv-admin: %s\n", rk_error_msg()[0] ? rk_error_msg() : rk_strerror(st));
    return st == RK_ERR_UNAVAILABLE || st == RK_ERR_TIMEOUT ? EXIT_CONN : EXIT_OPFAIL;
}

static void json_str(const char *s)
{
    putchar('"');
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            printf("\\%c", *s);
        else if ((unsigned char)*s < 0x20)
            printf("\\u%04x", *s);
        else
            putchar(*s);
    }
    putchar('"');
}

/* A freshly issued token, as JSON or as a sentence (intro has one %s for the tenant). */
static void print_token(const struct opts *o, const char *tenant, const char *token, const char *intro)
{
    if (o->json) {
        printf("{\"tenant\": ");
        json_str(tenant);
        printf(", \"token\": ");
        json_str(token);
        printf("}\n");
    } else {
        printf(intro, tenant);
        printf("%s\n", token);
    }
}

static int run_cmd(const struct opts *o, int argc, char **argv)
{
    const char *cmd = argv[0];
    const char *sub = argc > 1 ? argv[1] : "";
    const char *name = argc > 2 ? argv[2] : NULL;
    ragkv_conn *c = NULL;
    int rc;
    rk_status st;
    if (!strcmp(cmd, "tenant") && (!strcmp(sub, "create") || !strcmp(sub, "delete")) && !name) {
        fprintf(stderr, "ragkv-admin: tenant %s needs a NAME\n", sub);
        return EXIT_USAGE;
    }
    if (!strcmp(cmd, "token") && (strcmp(sub, "rotate") || !name)) {
        fprintf(stderr, "ragkv-admin: usage: token rotate NAME\n");
        return EXIT_USAGE;
    }
    if (!strcmp(cmd, "tenant") && strcmp(sub, "create") && strcmp(sub, "delete") && strcmp(sub, "list")) {
        fprintf(stderr, "ragkv-admin: usage: tenant create|delete|list\n");
        return EXIT_USAGE;
    }
    static const char *known[] = {"tenant", "token", "config", "shutdown", "quota", "grant", "revoke",
                                  "inspect", "evict", "flush", "stats"};
    int ok = 0;
    for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++)
        ok |= !strcmp(cmd, known[i]);
    if (!ok) {
        fprintf(stderr, "ragkv-admin: unknown command '%s' (try --help)\n", cmd);
        return EXIT_USAGE;
    }
    if ((!strcmp(cmd, "quota") && (strcmp(sub, "get") && strcmp(sub, "set"))) ||
        (!strcmp(cmd, "quota") && !name) ||
        ((!strcmp(cmd, "grant") || !strcmp(cmd, "revoke") || !strcmp(cmd, "inspect")) && argc < 3)) {
        fprintf(stderr, "ragkv-admin: usage: quota get|set NAME; grant|revoke NAMESPACE TENANT; inspect NAMESPACE KEY\n");
        return EXIT_USAGE;
    }
    uint8_t key[32];
    if (!strcmp(cmd, "inspect") && rk_unhex(key, 32, argv[2]) != RK_OK) {
        fprintf(stderr, "ragkv-admin: inspect: KEY must be 64 hex digits\n");
        return EXIT_USAGE;
    }
    if ((rc = admin_connect(o, &c)) != 0)
        return rc;
    char token[256];
    if (!strcmp(cmd, "tenant") && !strcmp(sub, "create")) {
        st = ragkv_admin_tenant_create(c, name, o->quota_bytes, o->quota_chunks, o->evict, token, sizeof(token));
        if (st == RK_OK) {
            print_token(o, name, token, "tenant %s created; its token (shown only once, keep it secret):\n");
        }
    } else if (!strcmp(cmd, "tenant") && !strcmp(sub, "delete")) {
        if ((st = ragkv_admin_tenant_delete(c, name)) == RK_OK && !o->json)
            printf("tenant %s deleted\n", name);
    } else if (!strcmp(cmd, "tenant")) {
        ragkv_tenant_row *rows;
        size_t n;
        if ((st = ragkv_admin_tenant_list(c, &rows, &n)) == RK_OK) {
            if (o->json) {
                printf("[");
                for (size_t i = 0; i < n; i++) {
                    printf("%s{\"tenant\": ", i ? ", " : "");
                    json_str(rows[i].name);
                    printf(", \"bytes\": %llu, \"chunks\": %llu, \"quota_bytes\": %llu, \"quota_chunks\": %llu}",
                           (unsigned long long)rows[i].bytes, (unsigned long long)rows[i].chunks,
                           (unsigned long long)rows[i].quota_bytes, (unsigned long long)rows[i].quota_chunks);
                }
                printf("]\n");
            } else {
                printf("%-24s %14s %10s %14s %12s\n", "TENANT", "BYTES", "CHUNKS", "QUOTA_BYTES", "QUOTA_CHUNKS");
                for (size_t i = 0; i < n; i++)
                    printf("%-24s %14llu %10llu %14llu %12llu\n", rows[i].name,
                           (unsigned long long)rows[i].bytes, (unsigned long long)rows[i].chunks,
                           (unsigned long long)rows[i].quota_bytes, (unsigned long long)rows[i].quota_chunks);
            }
            rk_free(rows);
        }
    } else if (!strcmp(cmd, "token")) {
        if ((st = ragkv_admin_token_rotate(c, name, token, sizeof(token))) == RK_OK) {
            print_token(o, name, token, "new token for %s (the old one no longer works):\n");
        }
    } else if (!strcmp(cmd, "config")) {
        char *text;
        if ((st = ragkv_admin_config_get(c, &text)) == RK_OK) {
            fputs(text, stdout);
            rk_free(text);
        }
    } else if (!strcmp(cmd, "quota") && !strcmp(sub, "set")) {
        if ((st = ragkv_admin_quota_set(c, name, o->quota_bytes, o->quota_chunks, o->evict)) == RK_OK && !o->json)
            printf("tenant %s: quota %llu bytes, %llu chunks, %s when full\n", name,
                   (unsigned long long)o->quota_bytes, (unsigned long long)o->quota_chunks,
                   o->evict ? "evict own chunks" : "refuse");
    } else if (!strcmp(cmd, "quota")) {
        uint64_t qb, qc, ub, uc;
        int pol;
        if ((st = ragkv_admin_quota_get(c, name, &qb, &qc, &pol, &ub, &uc)) == RK_OK) {
            if (o->json)
                printf("{\"quota_bytes\": %llu, \"quota_chunks\": %llu, \"policy\": \"%s\", \"bytes\": %llu, \"chunks\": %llu}\n",
                       (unsigned long long)qb, (unsigned long long)qc, pol ? "evict" : "reject",
                       (unsigned long long)ub, (unsigned long long)uc);
            else
                printf("tenant %s: %llu of %llu bytes, %llu of %llu chunks (0 = unlimited), %s when full\n", name,
                       (unsigned long long)ub, (unsigned long long)qb, (unsigned long long)uc, (unsigned long long)qc,
                       pol ? "evict own chunks" : "refuse");
        }
    } else if (!strcmp(cmd, "grant") || !strcmp(cmd, "revoke")) {
        int g = !strcmp(cmd, "grant");
        if ((st = ragkv_admin_grant(c, argv[1], argv[2], g)) == RK_OK && !o->json)
            printf("%s %s %s\n", argv[1], g ? "granted to" : "revoked from", argv[2]);
    } else if (!strcmp(cmd, "inspect")) {
        char *js;
        if ((st = ragkv_admin_inspect(c, argv[1], key, &js)) == RK_OK) {
            printf("%s\n", js);
            rk_free(js);
        }
    } else if (!strcmp(cmd, "stats")) {
        ragkv_tenant_row *rows = NULL;
        size_t n = 0;
        if (argc > 1) { /* one tenant */
            rows = rk_calloc(1, sizeof(*rows));
            st = rows ? RK_OK : RK_ERR_NOMEM;
            if (rows) {
                snprintf(rows[0].name, sizeof(rows[0].name), "%s", argv[1]);
                n = 1;
            }
        } else {
            st = ragkv_admin_tenant_list(c, &rows, &n);
        }
        if (st == RK_OK && !o->json)
            printf("%-24s %12s %8s %10s %8s %9s %10s %10s\n", "TENANT", "BYTES", "CHUNKS", "REQUESTS", "GENS",
                   "HIT RATE", "TTFT P50", "TTFT P99");
        if (st == RK_OK && o->json)
            printf("[");
        for (size_t i = 0; st == RK_OK && i < n; i++) {
            ragkv_tenant_stats ts;
            if ((st = ragkv_admin_tenant_stats(c, rows[i].name, &ts)) != RK_OK)
                break;
            double seg = (double)(ts.hits + ts.misses), hr = seg > 0 ? (double)ts.hits / seg : 0;
            if (o->json) {
                printf("%s{\"tenant\": ", i ? ", " : "");
                json_str(rows[i].name);
                printf(", \"bytes\": %llu, \"chunks\": %llu, \"requests\": %llu, \"generations\": %llu, "
                       "\"hits\": %llu, \"misses\": %llu, \"hit_rate\": %.4f, \"ttft_p50_ms\": %.1f, \"ttft_p99_ms\": %.1f}",
                       (unsigned long long)ts.bytes, (unsigned long long)ts.chunks, (unsigned long long)ts.requests,
                       (unsigned long long)ts.generations, (unsigned long long)ts.hits, (unsigned long long)ts.misses,
                       hr, ts.ttft_p50_ms, ts.ttft_p99_ms);
            } else {
                printf("%-24s %12llu %8llu %10llu %8llu %8.1f%% %8.0fms %8.0fms\n", rows[i].name,
                       (unsigned long long)ts.bytes, (unsigned long long)ts.chunks, (unsigned long long)ts.requests,
                       (unsigned long long)ts.generations, 100 * hr, ts.ttft_p50_ms, ts.ttft_p99_ms);
            }
        }
        if (st == RK_OK && o->json)
            printf("]\n");
        rk_free(rows);
    } else if (!strcmp(cmd, "evict") || !strcmp(cmd, "flush")) {
        uint64_t n = 0;
        int ev = !strcmp(cmd, "evict");
        if ((st = ev ? ragkv_admin_evict(c, &n) : ragkv_admin_flush(c, &n)) == RK_OK)
            printf(o->json ? "{\"removed\": %llu}\n" : ev ? "%llu chunks evicted\n" : "%llu orphan blobs removed\n",
                   (unsigned long long)n);
    } else {
        if ((st = ragkv_admin_shutdown(c)) == RK_OK && !o->json)
            printf("ragkvd is shutting down\n");
    }
    ragkv_close(c);
    return st == RK_OK ? 0 : fail(st);
}

int main(int argc, char **argv)
{
    struct opts o = {.host = "127.0.0.1", .port = SVC_DEFAULT_PORT, .http_port = SVC_DEFAULT_HTTP_PORT,
                     .timeout_ms = 5000};
    char *rest[8];
    int nrest = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(a, "--json")) {
            o.json = 1;
            continue;
        }
        if (!strcmp(a, "--evict")) {
            o.evict = 1;
            continue;
        }
        if (!strncmp(a, "--", 2)) {
            if (i + 1 >= argc) {
                fprintf(stderr, "ragkv-admin: %s needs a value\n", a);
                return EXIT_USAGE;
            }
            const char *v = argv[++i];
            uint64_t n = 0;
            int bad = 0;
            if (!strcmp(a, "--host"))
                o.host = v;
            else if (!strcmp(a, "--token-file"))
                o.token_file = v;
            else if (!strcmp(a, "--port") || !strcmp(a, "--http-port") || !strcmp(a, "--timeout")) {
                bad = parse_u64(v, &n) || n > (strcmp(a, "--timeout") ? 65535u : 3600000u);
                if (!strcmp(a, "--port"))
                    o.port = (int)n;
                else if (!strcmp(a, "--http-port"))
                    o.http_port = (int)n;
                else
                    o.timeout_ms = (int)n;
            } else if (!strcmp(a, "--quota-bytes"))
                bad = parse_u64(v, &o.quota_bytes);
            else if (!strcmp(a, "--quota-chunks"))
                bad = parse_u64(v, &o.quota_chunks);
            else {
                fprintf(stderr, "ragkv-admin: unknown option %s (try --help)\n", a);
                return EXIT_USAGE;
            }
            if (bad) {
                fprintf(stderr, "ragkv-admin: %s: '%s' is not a valid number\n", a, v);
                return EXIT_USAGE;
            }
            continue;
        }
        if (nrest == 8) {
            fprintf(stderr, "ragkv-admin: too many arguments\n");
            return EXIT_USAGE;
        }
        rest[nrest++] = argv[i];
    }
    if (nrest == 0) {
        usage(stderr);
        return EXIT_USAGE;
    }
    if (!strcmp(rest[0], "version")) {
        printf("ragkv-admin %s\n", RAGKV_VERSION);
        return 0;
    }
    if (!strcmp(rest[0], "health"))
        return http_cmd(&o, "/healthz");
    if (!strcmp(rest[0], "metrics"))
        return http_cmd(&o, "/metrics");
    return run_cmd(&o, nrest, rest);
}
