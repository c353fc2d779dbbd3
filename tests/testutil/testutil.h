/*
 * testutil.h — helpers shared by ragkv's Criterion tests (white-box by nature: not API).
 */
#ifndef RAGKV_TESTUTIL_H
#define RAGKV_TESTUTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

/* Folder with the real test models: $RAGKV_TEST_MODELS, else ../shared/models beside the
 * source tree; NULL when neither holds stories260K.bin. */
const char *rk_test_models_dir(void);

/* Path of a model file in that folder (static buffer), or NULL (see above). Tests that need
 * one call cr_skip_test("skipped: no real model ...") when it is NULL. */
const char *rk_test_model_path(const char *file);

/* Path of a built executable, e.g. rk_test_bin("ragkvd") (static buffer per call site). */
const char *rk_test_bin(const char *name, char *buf, size_t len);

/* A fresh temporary directory (mkdtemp under $TMPDIR); caller removes with rk_test_rmrf. */
char *rk_test_tmpdir(char *buf, size_t len);
void rk_test_rmrf(const char *path);

/* Whether probe() holds, asked in a child process so that this one initialises nothing (CUDA,
 * say) that the test processes Criterion starts from it could not use: 1 yes (probe true), 0
 * no (false), -1 when the child did not say (crashed, fork failed). */
int rk_test_probe(bool (*probe)(void));

/* A Criterion main for test files that need something the machine may lack (a GPU): when
 * rk_test_probe(probe) is 0 it prints "<name>: skipped: <why>" and returns 77 (ctest's
 * SKIP_RETURN_CODE, set for every test_gpu_* file) without starting a process per test
 * (which, with the CUDA libraries linked, costs about a second each); else it runs the
 * tests as Criterion's own main does. */
int rk_test_main_unless(int argc, char *argv[], bool (*probe)(void), const char *name, const char *why);

/* A child process whose stdout we read. */
typedef struct rk_test_proc {
    pid_t pid;
    int out_fd; /* read end of the child's stdout */
} rk_test_proc;

/* Start argv[0] (a path) with argv; stdout piped to us, stderr inherited. */
bool rk_test_spawn(char *const argv[], rk_test_proc *p);

/* Read one line of the child's stdout (without '\n') within timeout_ms. false on EOF or
 * timeout. This is the synchronisation event for daemons: they print "ready" lines. */
bool rk_test_read_line(rk_test_proc *p, char *line, size_t len, int timeout_ms);

/* Send sig and wait up to timeout_ms for exit. Returns the exit status (0..255), 128+signal
 * when killed by a signal, or -1 on timeout (the child is then SIGKILLed). */
int rk_test_stop(rk_test_proc *p, int sig, int timeout_ms);

/* Wait for exit without signalling (same return values). */
int rk_test_wait(rk_test_proc *p, int timeout_ms);

/* Start the built ragkvd with data under dir/var, both ports 0 (the kernel picks), plus
 * extra flags (NULL-terminated list, may be NULL); wait for its ready line and report the
 * ports. false (with the child reaped) when it does not come up within 20 s. */
bool rk_test_daemon_start(const char *dir, const char *const *extra, rk_test_proc *p, int *port,
                          int *http_port);

/* The same with another daemon binary of the build (e.g. "ragkvd-crashpoints"). */
bool rk_test_daemon_start_bin(const char *name, const char *dir, const char *const *extra, rk_test_proc *p,
                              int *port, int *http_port);

/* The admin credential a daemon started in dir wrote (dir/var/admin.token, first line without
 * its newline) into buf; false when the file is missing or empty. */
bool rk_test_admin_token(const char *dir, char *buf, size_t len);

/* Two-sample Kolmogorov-Smirnov test of samples a (na) and b (nb): returns the p-value of
 * "both come from one distribution" (asymptotic Kolmogorov distribution with the
 * small-sample correction of Stephens, 1970) and the statistic D = sup|F_a - F_b| in *d.
 * Sorts a and b in place. */
double rk_test_ks2(double *a, size_t na, double *b, size_t nb, double *d);

/* A loopback TCP port that was free a moment ago (bind to 0, read it back, close); -1 on error. */
int rk_test_free_port(void);

/* Path of redis-server: $RAGKV_REDIS_SERVER, else the first on $PATH; NULL when none. */
const char *rk_test_redis_server_path(void);

/* Start a private redis-server on 127.0.0.1:port (no persistence, files in dir), a replica of
 * 127.0.0.1:replicaof_port unless that is 0; returns once it logs that it accepts connections
 * (false, child reaped, when it does not within 10 s or there is no redis-server). */
bool rk_test_redis_server(rk_test_proc *p, int port, const char *dir, int replicaof_port);

/* Start a Redis Sentinel (redis-server --sentinel) on 127.0.0.1:port, its configuration in
 * dir (one file per port), monitoring master `name` at host:master_port with quorum 1 and a
 * down-after of 60 s (it fails nothing over by itself during a test); returns once it logs
 * its +monitor event (false, child reaped, when it does not within 10 s or there is no
 * redis-server). Its answers then name host:master_port until told otherwise. */
bool rk_test_sentinel(rk_test_proc *p, int port, const char *dir, const char *name, const char *host,
                      int master_port);

/* "host:port" of the test Redis ($RAGKV_TEST_REDIS) split out; false when unset. */
bool rk_test_redis(char *host, size_t hostlen, int *port);

#endif
