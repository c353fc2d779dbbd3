/* testutil.c — see testutil.h. */
#define _GNU_SOURCE
#include "testutil.h"

#include <errno.h>
#include <fcntl.h>
#include <arpa/inet.h>
#include <ftw.h>
#include <netinet/in.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "ragkv/clock.h"

static bool file_exists(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0;
}

const char *rk_test_models_dir(void)
{
    static char dir[4096];
    const char *env = getenv("RAGKV_TEST_MODELS");
    char probe[4200];
    if (env && *env) {
        snprintf(probe, sizeof(probe), "%s/stories260K.bin", env);
        if (file_exists(probe)) {
            snprintf(dir, sizeof(dir), "%s", env);
            return dir;
        }
    }
    snprintf(dir, sizeof(dir), "%s/../shared/models", RAGKV_SOURCE_DIR);
    snprintf(probe, sizeof(probe), "%s/stories260K.bin", dir);
    return file_exists(probe) ? dir : NULL;
}

const char *rk_test_model_path(const char *file)
{
    static _Thread_local char path[4400];
    const char *dir = rk_test_models_dir();
    if (!dir)
        return NULL;
    snprintf(path, sizeof(path), "%s/%s", dir, file);
    return file_exists(path) ? path : NULL;
}

const char *rk_test_bin(const char *name, char *buf, size_t len)
{
    static const char *dirs[] = {"service", "clients", "bench", "."};
    for (size_t i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++) {
        snprintf(buf, len, "%s/%s/%s", RAGKV_BINARY_DIR, dirs[i], name);
        if (access(buf, X_OK) == 0)
            return buf;
    }
    snprintf(buf, len, "%s/%s", RAGKV_BINARY_DIR, name);
    return buf;
}

char *rk_test_tmpdir(char *buf, size_t len)
{
    const char *t = getenv("TMPDIR");
    snprintf(buf, len, "%s/ragkv-test-XXXXXX", t && *t ? t : "/tmp");
    return mkdtemp(buf);
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

void rk_test_rmrf(const char *path)
{
    if (path && *path)
        nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

bool rk_test_spawn(char *const argv[], rk_test_proc *p)
{
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0)
        return false;
    pid_t pid = fork();
    if (pid < 0) {
        close(fds[0]);
        close(fds[1]);
        return false;
    }
    if (pid == 0) {
        dup2(fds[1], 1);
        execv(argv[0], argv);
        fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    close(fds[1]);
    p->pid = pid;
    p->out_fd = fds[0];
    return true;
}

bool rk_test_read_line(rk_test_proc *p, char *line, size_t len, int timeout_ms)
{
    uint64_t deadline = rk_now_ns() + (uint64_t)timeout_ms * 1000000ull;
    size_t n = 0;
    while (n + 1 < len) {
        uint64_t now = rk_now_ns();
        if (now >= deadline)
            return false;
        struct pollfd pf = {p->out_fd, POLLIN, 0};
        int r = poll(&pf, 1, (int)((deadline - now) / 1000000ull) + 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return false;
        char c;
        ssize_t got = read(p->out_fd, &c, 1);
        if (got <= 0)
            return false;
        if (c == '\n')
            break;
        line[n++] = c;
    }
    line[n] = '\0';
    return true;
}

int rk_test_wait(rk_test_proc *p, int timeout_ms)
{
    uint64_t deadline = rk_now_ns() + (uint64_t)timeout_ms * 1000000ull;
    for (;;) {
        int status;
        pid_t r = waitpid(p->pid, &status, WNOHANG);
        if (r == p->pid) {
            close(p->out_fd);
            if (WIFEXITED(status))
                return WEXITSTATUS(status);
            return 128 + WTERMSIG(status);
        }
        if (rk_now_ns() >= deadline) {
            kill(p->pid, SIGKILL);
            waitpid(p->pid, &status, 0);
            close(p->out_fd);
            return -1;
        }
        /* waitpid has no timeout; poll the child's stdout for EOF as the exit event */
        struct pollfd pf = {p->out_fd, POLLIN, 0};
        char sink[256];
        if (poll(&pf, 1, 50) > 0 && read(p->out_fd, sink, sizeof(sink)) <= 0) {
            struct timespec ts = {0, 1000000}; /* stdout closed; exit is imminent */
            nanosleep(&ts, NULL);
        }
    }
}

int rk_test_stop(rk_test_proc *p, int sig, int timeout_ms)
{
    kill(p->pid, sig);
    return rk_test_wait(p, timeout_ms);
}

bool rk_test_redis(char *host, size_t hostlen, int *port)
{
    const char *env = getenv("RAGKV_TEST_REDIS");
    if (!env || !*env)
        return false;
    const char *colon = strrchr(env, ':');
    if (!colon || (size_t)(colon - env) >= hostlen)
        return false;
    memcpy(host, env, (size_t)(colon - env));
    host[colon - env] = '\0';
    *port = atoi(colon + 1);
    return *port > 0;
}

bool rk_test_daemon_start(const char *dir, const char *const *extra, rk_test_proc *p, int *port,
                          int *http_port)
{
    return rk_test_daemon_start_bin("ragkvd", dir, extra, p, port, http_port);
}

bool rk_test_daemon_start_bin(const char *name, const char *dir, const char *const *extra, rk_test_proc *p,
                              int *port, int *http_port)
{
    char bin[1024], dd[1024], line[512], host[64];
    rk_test_bin(name, bin, sizeof(bin));
    snprintf(dd, sizeof(dd), "%s/var", dir);
    char *argv[64] = {bin, "--port", "0", "--http-port", "0", "--data-dir", dd, "--workers", "2"};
    int n = 9;
    for (int i = 0; extra && extra[i] && n < 63; i++)
        argv[n++] = (char *)extra[i];
    argv[n] = NULL;
    if (!rk_test_spawn(argv, p))
        return false;
    if (!rk_test_read_line(p, line, sizeof(line), 20000) ||
        sscanf(line, "ragkvd ready: protocol %63[^:]:%d http %*[^:]:%d", host, port, http_port) != 3) {
        rk_test_stop(p, 9, 5000);
        return false;
    }
    return true;
}

bool rk_test_admin_token(const char *dir, char *buf, size_t len)
{
    char path[1024];
    snprintf(path, sizeof(path), "%s/var/admin.token", dir);
    FILE *f = fopen(path, "r");
    if (!f)
        return false;
    bool ok = fgets(buf, (int)len, f) != NULL;
    fclose(f);
    if (ok)
        buf[strcspn(buf, "\n")] = '\0';
    return ok && buf[0] != '\0';
}

static int cmp_double(const void *x, const void *y)
{
    double a = *(const double *)x, b = *(const double *)y;
    return (a > b) - (a < b);
}

double rk_test_ks2(double *a, size_t na, double *b, size_t nb, double *d)
{
    qsort(a, na, sizeof(double), cmp_double);
    qsort(b, nb, sizeof(double), cmp_double);
    /* walk both sorted samples; ties advance together so D compares the true ECDFs */
    size_t i = 0, j = 0;
    double dmax = 0;
    while (i < na && j < nb) {
        double v = a[i] < b[j] ? a[i] : b[j];
        while (i < na && a[i] <= v)
            i++;
        while (j < nb && b[j] <= v)
            j++;
        double diff = fabs((double)i / (double)na - (double)j / (double)nb);
        if (diff > dmax)
            dmax = diff;
    }
    if (d)
        *d = dmax;
    /* Q_KS(lambda) = 2 sum_{k>=1} (-1)^(k-1) exp(-2 k^2 lambda^2) */
    double ne = (double)na * (double)nb / (double)(na + nb);
    double sq = sqrt(ne);
    double lambda = (sq + 0.12 + 0.11 / sq) * dmax;
    if (lambda < 1e-3)
        return 1.0;
    double sum = 0, sign = 1;
    for (int k = 1; k <= 100; k++) {
        double term = sign * exp(-2.0 * k * k * lambda * lambda);
        sum += term;
        if (fabs(term) < 1e-12)
            break;
        sign = -sign;
    }
    double p = 2 * sum;
    return p < 0 ? 0 : p > 1 ? 1 : p;
}

int rk_test_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t l = sizeof(a);
    int port = -1;
    if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 && getsockname(fd, (struct sockaddr *)&a, &l) == 0)
        port = ntohs(a.sin_port);
    if (fd >= 0)
        close(fd);
    return port;
}

const char *rk_test_redis_server_path(void)
{
    static char buf[512];
    const char *env = getenv("RAGKV_REDIS_SERVER");
    if (env && *env)
        return env;
    const char *path = getenv("PATH");
    char tmp[4096];
    snprintf(tmp, sizeof(tmp), "%s", path ? path : "/usr/bin:/bin");
    for (char *save, *d = strtok_r(tmp, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
        snprintf(buf, sizeof(buf), "%s/redis-server", d);
        if (access(buf, X_OK) == 0)
            return buf;
    }
    return NULL;
}

/* Start argv and wait (10 s per line) for a line of its output containing marker; the process
 * is killed when it never says so. */
static bool spawn_until(char *const argv[], rk_test_proc *p, const char *marker)
{
    if (!rk_test_spawn(argv, p))
        return false;
    char line[1024];
    while (rk_test_read_line(p, line, sizeof(line), 10000))
        if (strstr(line, marker))
            return true;
    rk_test_stop(p, SIGKILL, 5000);
    return false;
}

bool rk_test_redis_server(rk_test_proc *p, int port, const char *dir, int replicaof_port)
{
    const char *bin = rk_test_redis_server_path();
    if (!bin)
        return false;
    char ps[16], rs[16];
    snprintf(ps, sizeof(ps), "%d", port);
    snprintf(rs, sizeof(rs), "%d", replicaof_port);
    char *argv[] = {(char *)bin, "--bind", "127.0.0.1", "--port", ps, "--save", "", "--appendonly", "no",
                    "--dir", (char *)dir, "--daemonize", "no", "--loglevel", "notice",
                    replicaof_port ? "--replicaof" : NULL, "127.0.0.1", rs, NULL};
    return spawn_until(argv, p, "Ready to accept connections");
}

bool rk_test_sentinel(rk_test_proc *p, int port, const char *dir, const char *name, const char *host,
                      int master_port)
{
    const char *bin = rk_test_redis_server_path();
    if (!bin)
        return false;
    char conf[512];
    snprintf(conf, sizeof(conf), "%s/sentinel-%d.conf", dir, port);
    FILE *f = fopen(conf, "w"); /* Sentinel rewrites it: a file of its own */
    if (!f)
        return false;
    fprintf(f, "bind 127.0.0.1\nport %d\ndir %s\nsentinel monitor %s %s %d 1\n"
               "sentinel down-after-milliseconds %s 60000\n",
            port, dir, name, host, master_port, name);
    fclose(f);
    char *argv[] = {(char *)bin, conf, "--sentinel", NULL};
    return spawn_until(argv, p, "+monitor master"); /* it watches the primary */
}

int rk_test_probe(bool (*probe)(void))
{
    pid_t pid = fork();
    if (pid == 0)
        _exit(probe() ? 0 : 1);
    int ws = 0;
    if (pid < 0 || waitpid(pid, &ws, 0) != pid || !WIFEXITED(ws) || WEXITSTATUS(ws) > 1)
        return -1;
    return WEXITSTATUS(ws) == 0;
}

int rk_test_main_unless(int argc, char *argv[], bool (*probe)(void), const char *name, const char *why)
{
    struct criterion_test_set *tests = criterion_initialize();
    int result = 0;
    if (rk_test_probe(probe) == 0) { /* a clear no; otherwise the tests run and say what is wrong */
        fprintf(stderr, "%s: skipped: %s\n", name, why);
        result = 77;
    } else if (criterion_handle_args(argc, argv, true)) {
        result = !criterion_run_all_tests(tests);
    }
    criterion_finalize(tests);
    return result;
}
