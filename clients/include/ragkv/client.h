/*
 * ragkv/client.h — the public C client API of ragkv.
 *
 * This version carries the pieces the admin CLI needs today (the daemon's HTTP endpoint);
 * the binary-protocol client (connect, auth, PUT_CHUNK, GENERATE, ...) joins it with the
 * protocol itself.
 *
 *     char *body; int code;
 *     if (ragkv_http_get("127.0.0.1", 7471, "/healthz", 2000, &code, &body) == RK_OK) {
 *         printf("%d %s", code, body);
 *         rk_free(body);
 *     }
 */
#ifndef RAGKV_CLIENT_H
#define RAGKV_CLIENT_H

#include "ragkv/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* HTTP/1.0 GET of path from host:port within timeout_ms. On RK_OK *status holds the HTTP
 * status code and *body the NUL-terminated response body (caller frees with rk_free).
 * RK_ERR_UNAVAILABLE when nothing listens, RK_ERR_TIMEOUT, RK_ERR_PROTOCOL on a reply that
 * is not HTTP, RK_ERR_LIMIT when the body exceeds 16 MiB. */
rk_status ragkv_http_get(const char *host, int port, const char *path, int timeout_ms,
                         int *status, char **body);

#ifdef __cplusplus
}
#endif
#endif
