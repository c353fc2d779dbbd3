/* net.h — private to clients/: blocking-with-deadline socket helpers over non-blocking fds. */
#ifndef RAGKV_CLIENT_NET_H
#define RAGKV_CLIENT_NET_H

#include <stddef.h>
#include <stdint.h>

#include "ragkv/status.h"

/* Connect a non-blocking TCP socket to host:port before the deadline (rk_now_ns() clock). */
rk_status rk_net_connect(const char *host, int port, uint64_t deadline, int *out);
/* Wait until fd is ready for events (POLLIN/POLLOUT) or the deadline passes. */
rk_status rk_net_wait(int fd, short events, uint64_t deadline);
/* Send / receive exactly len bytes. Receive returns RK_ERR_UNAVAILABLE when the peer closes. */
rk_status rk_net_send_all(int fd, const void *buf, size_t len, uint64_t deadline);
rk_status rk_net_recv_all(int fd, void *buf, size_t len, uint64_t deadline);

#endif
