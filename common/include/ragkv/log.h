/*
 * ragkv/log.h — leveled logging to stderr (or a file), safe from any thread.
 *
 *     rk_log_set_level(RK_LOG_DEBUG);
 *     RK_INFO("listening on %s:%d", host, port);
 *
 * Each line: "2026-11-26T17:45:11.123Z INFO  [component] message". Lines are written with
 * one write(2) so concurrent threads never interleave within a line.
 */
#ifndef RAGKV_LOG_H
#define RAGKV_LOG_H

#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum rk_log_level {
    RK_LOG_DEBUG = 0,
    RK_LOG_INFO = 1,
    RK_LOG_WARN = 2,
    RK_LOG_ERROR = 3,
    RK_LOG_OFF = 4,
} rk_log_level;

/* Set the minimum level that is written. Default RK_LOG_INFO, or $RAGKV_LOG_LEVEL
 * (debug|info|warn|error|off) read on first use. */
void rk_log_set_level(rk_log_level lvl);
rk_log_level rk_log_get_level(void);

/* Parse "debug|info|warn|error|off"; returns -1 on an unknown name. */
int rk_log_level_parse(const char *name);

/* Send log lines to fd (default 2, stderr). The caller keeps ownership of fd. */
void rk_log_set_fd(int fd);

/* Write one line at lvl; component may be NULL. */
void rk_log(rk_log_level lvl, const char *component, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#ifndef RK_LOG_COMPONENT
#define RK_LOG_COMPONENT NULL
#endif
#define RK_DEBUG(...) rk_log(RK_LOG_DEBUG, RK_LOG_COMPONENT, __VA_ARGS__)
#define RK_INFO(...) rk_log(RK_LOG_INFO, RK_LOG_COMPONENT, __VA_ARGS__)
#define RK_WARN(...) rk_log(RK_LOG_WARN, RK_LOG_COMPONENT, __VA_ARGS__)
#define RK_ERROR(...) rk_log(RK_LOG_ERROR, RK_LOG_COMPONENT, __VA_ARGS__)

#ifdef __cplusplus
}
#endif
#endif
