/* ragkvd — the ragkv daemon. Everything lives in the service library; this is main(). */
#include <signal.h>
#include <stdio.h>

#include "ragkv/log.h"
#include "ragkv/service.h"
#include "ragkv/version.h"

int main(int argc, char **argv)
{
    svc_config cfg;
    char err[1024] = "";
    svc_config_defaults(&cfg);
    rk_status st = svc_config_parse_args(&cfg, argc, argv, err, sizeof(err));
    if (st == RK_ERR_CANCELLED) /* --help / --version */
        return 0;
    if (st != RK_OK) {
        fprintf(stderr, "ragkvd: %s\n", err);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    svc_server *srv;
    if ((st = svc_server_open(&cfg, &srv)) != RK_OK) {
        fprintf(stderr, "ragkvd: %s: %s\n", rk_strerror(st), rk_error_msg());
        return 1;
    }
    /* One line on stdout once both listeners are bound: scripts and tests wait for it. */
    printf("ragkvd ready: protocol %s:%d http %s:%d\n", cfg.bind, svc_server_port(srv), cfg.bind,
           svc_server_http_port(srv));
    fflush(stdout);
    st = svc_server_run(srv);
    svc_server_close(srv);
    return st == RK_OK ? 0 : 1;
}
