/*
 * ragkv/crashpoint.h — test-only crash points: named places where a test can make the process
 * die at once (SIGKILL, no cleanup, no flush), to check what a real crash there leaves behind.
 *
 *     RK_CRASHPOINT("put_blob_written");   // in the write path, between two steps
 *
 * In a build with RAGKV_CRASHPOINTS defined (CMake -DRAGKV_CRASHPOINTS=ON, or a test target
 * that defines it for its own copies of the sources), the macro calls rk_crashpoint(), which
 * kills the process when $RAGKV_CRASHPOINT names this point: `name` (the first time the point
 * is reached) or `name:N` (the N-th time, counted from 1). In every other build the macro
 * compiles to nothing: release binaries carry no crash points and read no variable.
 *
 * Points (docs/reliability.md): put_blob_written (chunkcache: blob in RocksDB, no metadata),
 * put_meta_committed (metadata committed, evicted blobs not yet deleted, nothing acknowledged),
 * put_before_ack (service: the store call returned, the acknowledgement not yet queued).
 */
#ifndef RAGKV_CRASHPOINT_H
#define RAGKV_CRASHPOINT_H

#ifdef __cplusplus
extern "C" {
#endif

/* Count one arrival at point `name`; SIGKILL the process when $RAGKV_CRASHPOINT selects this
 * arrival. Thread-safe. The variable is read once, on the first call. */
void rk_crashpoint(const char *name);

#ifdef __cplusplus
}
#endif

#if defined(RAGKV_CRASHPOINTS) && RAGKV_CRASHPOINTS
#define RK_CRASHPOINT(name) rk_crashpoint(name)
#else
#define RK_CRASHPOINT(name) ((void)0)
#endif

#endif
