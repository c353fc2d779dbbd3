/* http_get.c — a tiny blocking HTTP/1.0 GET for the admin CLI and tests. */
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "ragkv/alloc.h"
#include "ragkv/bytes.h"
#include "ragkv/clock.h"
#include "ragkv/client.h"

#define HTTP_MAX (16u << 20)

static int ms_left(uint64_t deadline)
{
    uint64_t now = rk_now_ns();
    return now >= deadline ? 0 : (int)((deadline - now) / 1000000ull) + 1;
}

/* Wait for fd to become ready for `events` before the deadline. */
static rk_status wait_fd(int fd, short events, uint64_t deadline)
{
    struct pollfd p = {fd, events, 0};
    for (;;) {
        int n = poll(&p, 1, ms_left(deadline));
        if (n > 0)
            return RK_OK;
        if (n == 0)
            return rk_error_set(RK_ERR_TIMEOUT, "no answer in time");
        if (errno != EINTR)
            return rk_error_set(RK_ERR_IO, "poll: %s", strerror(errno));
    }
}

static rk_status connect_to(const char *host, int port, uint64_t deadline, int *out)
{
    struct addrinfo hints = {0}, *res = NULL;
    char ps[16];
    hints.ai_socktype = SOCK_STREAM;
    snprintf(ps, sizeof(ps), "%d", port);
    int rc = getaddrinfo(host, ps, &hints, &res);
    if (rc != 0)
        return rk_error_set(RK_ERR_INVALID, "%s: %s", host, gai_strerror(rc));
    rk_status st = rk_error_set(RK_ERR_UNAVAILABLE, "%s:%d: nothing answers", host, port);
    for (struct addrinfo *a = res; a; a = a->ai_next) {
        int fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0)
            continue;
        if (connect(fd, a->ai_addr, a->ai_addrlen) != 0 && errno != EINPROGRESS) {
            st = rk_error_set(RK_ERR_UNAVAILABLE, "%s:%d: %s", host, port, strerror(errno));
            close(fd);
            continue;
        }
        if ((st = wait_fd(fd, POLLOUT, deadline)) == RK_OK) {
            int err = 0;
            socklen_t el = sizeof(err);
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el);
            if (err == 0) {
                *out = fd;
                break;
            }
            st = rk_error_set(RK_ERR_UNAVAILABLE, "%s:%d: %s", host, port, strerror(err));
        }
        close(fd);
    }
    freeaddrinfo(res);
    return st;
}

rk_status ragkv_http_get(const char *host, int port, const char *path, int timeout_ms,
                         int *status, char **body)
{
    uint64_t deadline = rk_now_ns() + (uint64_t)timeout_ms * 1000000ull;
    int fd = -1;
    rk_status st = connect_to(host, port, deadline, &fd);
    if (st != RK_OK)
        return st;
    char req[1024];
    int n = snprintf(req, sizeof(req), "GET %s HTTP/1.0\r\nHost: %s\r\nConnection: close\r\n\r\n", path, host);
    if (n < 0 || (size_t)n >= sizeof(req)) {
        close(fd);
        return rk_error_set(RK_ERR_INVALID, "path too long");
    }
    for (int off = 0; off < n;) {
        if ((st = wait_fd(fd, POLLOUT, deadline)) != RK_OK)
            goto out;
        ssize_t w = send(fd, req + off, (size_t)(n - off), MSG_NOSIGNAL);
        if (w < 0 && errno != EAGAIN && errno != EINTR) {
            st = rk_error_set(RK_ERR_IO, "send: %s", strerror(errno));
            goto out;
        }
        if (w > 0)
            off += (int)w;
    }
    rk_buf b = RK_BUF_INIT;
    for (;;) {
        if ((st = wait_fd(fd, POLLIN, deadline)) != RK_OK)
            break;
        if (!rk_buf_reserve(&b, 4096)) {
            st = RK_ERR_NOMEM;
            break;
        }
        ssize_t r = recv(fd, b.data + b.len, 4096, 0);
        if (r == 0)
            break;
        if (r < 0) {
            if (errno == EAGAIN || errno == EINTR)
                continue;
            st = rk_error_set(RK_ERR_IO, "recv: %s", strerror(errno));
            break;
        }
        b.len += (size_t)r;
        if (b.len > HTTP_MAX) {
            st = rk_error_set(RK_ERR_LIMIT, "reply larger than %u bytes", HTTP_MAX);
            break;
        }
    }
    rk_buf_put_u8(&b, 0);
    if (st == RK_OK && b.failed)
        st = RK_ERR_NOMEM;
    if (st == RK_OK) {
        char *text = (char *)b.data;
        char *sep = strstr(text, "\r\n\r\n");
        int code;
        if (strncmp(text, "HTTP/1.", 7) != 0 || !sep || sscanf(text + 9, "%3d", &code) != 1) {
            st = rk_error_set(RK_ERR_PROTOCOL, "reply is not HTTP");
        } else {
            *status = code;
            *body = rk_strdup(sep + 4);
            if (!*body)
                st = RK_ERR_NOMEM;
        }
    }
    rk_buf_free(&b);
out:
    close(fd);
    return st;
}
