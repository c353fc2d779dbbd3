/*
 * ragkv/status.h — the one status type every ragkv module returns.
 *
 * Every fallible function returns rk_status: RK_OK (0) on success, a negative code on
 * failure. Foreign errors (RocksDB errptr strings, cudaError_t, cublasStatus_t, hiredis
 * err) are translated into these codes at the backend boundary and never leak upward.
 *
 * A failing function may also leave a human-readable detail for the calling thread with
 * rk_error_set(); the caller reads it with rk_error_msg() before its next ragkv call.
 *
 *     rk_status st = eng_model_open(path, &m);
 *     if (st != RK_OK)
 *         fprintf(stderr, "%s: %s (%s)\n", path, rk_strerror(st), rk_error_msg());
 */
#ifndef RAGKV_STATUS_H
#define RAGKV_STATUS_H

#ifdef __cplusplus
extern "C" {
#endif

typedef enum rk_status {
    RK_OK = 0,
    RK_ERR_NOMEM = -1,        /* allocation failed (host or device) */
    RK_ERR_INVALID = -2,      /* bad argument or request (caller's fault) */
    RK_ERR_IO = -3,           /* operating-system I/O error */
    RK_ERR_FORMAT = -4,       /* malformed input: bad magic, bad JSON, inconsistent sizes */
    RK_ERR_TRUNCATED = -5,    /* input ends before its declared size */
    RK_ERR_CORRUPT = -6,      /* checksum mismatch: data damaged in storage or transit */
    RK_ERR_UNSUPPORTED = -7,  /* well-formed but not supported (version, dtype, architecture) */
    RK_ERR_NOT_FOUND = -8,    /* no such object (for this tenant) */
    RK_ERR_EXISTS = -9,       /* object already exists */
    RK_ERR_RANGE = -10,       /* value out of range: position beyond context, id beyond vocab */
    RK_ERR_LIMIT = -11,       /* a configured size/count limit would be exceeded */
    RK_ERR_QUOTA = -12,       /* tenant quota exceeded */
    RK_ERR_AUTH = -13,        /* not authenticated or bad credential */
    RK_ERR_DENIED = -14,      /* authenticated but not allowed */
    RK_ERR_PROTOCOL = -15,    /* peer violated the wire protocol */
    RK_ERR_TIMEOUT = -16,     /* deadline passed */
    RK_ERR_UNAVAILABLE = -17, /* a backend (Redis, peer node, device) is down or unreachable */
    RK_ERR_BUSY = -18,        /* overloaded: try again later */
    RK_ERR_CANCELLED = -19,   /* operation cancelled (client gone, shutdown) */
    RK_ERR_SHUTDOWN = -20,    /* the process is shutting down */
    RK_ERR_DEVICE = -21,      /* accelerator error (CUDA runtime, cuBLAS) */
    RK_ERR_STORE = -22,       /* blob store error (RocksDB) */
    RK_ERR_META = -23,        /* metadata store error (Redis or embedded) */
    RK_ERR_INTERNAL = -24,    /* a bug: an invariant did not hold */
    RK_ERR_NOT_IMPLEMENTED = -25, /* feature not built yet in this version */
} rk_status;

/* Name of the code as a short sentence ("out of memory"). Never NULL; static storage. */
const char *rk_strerror(rk_status st);

/* Stable upper-case identifier ("RK_ERR_NOMEM"), for logs, metrics and the wire. Static. */
const char *rk_status_name(rk_status st);

/* Record a detail message for the calling thread (printf format) and return st, so that
 * failing paths read `return rk_error_set(RK_ERR_FORMAT, "tensor %s: bad shape", name);`.
 * Messages longer than 255 bytes are truncated. */
rk_status rk_error_set(rk_status st, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* The calling thread's last detail message, "" when none. Valid until the thread's next
 * rk_error_set() or rk_error_clear(). */
const char *rk_error_msg(void);

/* Forget the calling thread's detail message. */
void rk_error_clear(void);

#ifdef __cplusplus
}
#endif
#endif
