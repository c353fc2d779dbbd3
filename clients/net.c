/* net.c — socket helpers with deadlines, shared by the HTTP helper and the protocol client. */
#include "net.h"

#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "ragkv/clock.h"

static int ms_left(uint64_t deadline)
{
    uint64_t now = rk_now_ns();
    return now >= deadline ? 0 : (int)((deadline - now) / 1000000ull) + 1;
}

/* Wait for fd to become ready for `events` before the deadline. */
rk_status rk_net_wait(int fd, short events, uint64_t deadline)
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

rk_status rk_net_connect(const char *host, int port, uint64_t deadline, int *out)
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
        if ((st = rk_net_wait(fd, POLLOUT, deadline)) == RK_OK) {
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


rk_status rk_net_send_all(int fd, const void *buf, size_t len, uint64_t deadline)
{
    const uint8_t *p = buf;
    while (len) {
        ssize_t w = send(fd, p, len, MSG_NOSIGNAL);
        if (w > 0) {
            p += w;
            len -= (size_t)w;
            continue;
        }
        if (w < 0 && errno != EAGAIN && errno != EINTR)
            return rk_error_set(errno == EPIPE || errno == ECONNRESET ? RK_ERR_UNAVAILABLE : RK_ERR_IO,
                                "send: %s", strerror(errno));
        rk_status st = rk_net_wait(fd, POLLOUT, deadline);
        if (st != RK_OK)
            return st;
    }
    return RK_OK;
}

rk_status rk_net_recv_all(int fd, void *buf, size_t len, uint64_t deadline)
{
    uint8_t *p = buf;
    while (len) {
        ssize_t r = recv(fd, p, len, 0);
        if (r > 0) {
            p += r;
            len -= (size_t)r;
            continue;
        }
        if (r == 0)
            return rk_error_set(RK_ERR_UNAVAILABLE, "connection closed by the server");
        if (errno != EAGAIN && errno != EINTR)
            return rk_error_set(errno == ECONNRESET ? RK_ERR_UNAVAILABLE : RK_ERR_IO, "recv: %s",
                                strerror(errno));
        rk_status st = rk_net_wait(fd, POLLIN, deadline);
        if (st != RK_OK)
            return st;
    }
    return RK_OK;
}
