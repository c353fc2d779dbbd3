/* log.c — leveled, line-atomic logging. */
#include "ragkv/log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

/* -1: not yet initialised from the environment. */
static atomic_int log_level = -1;
static atomic_int log_fd = 2;

int rk_log_level_parse(const char *name)
{
    static const char *names[] = {"debug", "info", "warn", "error", "off"};
    if (!name)
        return -1;
    for (int i = 0; i < 5; i++)
        if (strcasecmp(name, names[i]) == 0)
            return i;
    if (strcasecmp(name, "warning") == 0)
        return RK_LOG_WARN;
    return -1;
}

rk_log_level rk_log_get_level(void)
{
    int lvl = atomic_load(&log_level);
    if (lvl < 0) {
        lvl = rk_log_level_parse(getenv("RAGKV_LOG_LEVEL"));
        if (lvl < 0)
            lvl = RK_LOG_INFO;
        atomic_store(&log_level, lvl);
    }
    return (rk_log_level)lvl;
}

void rk_log_set_level(rk_log_level lvl)
{
    atomic_store(&log_level, (int)lvl);
}

void rk_log_set_fd(int fd)
{
    atomic_store(&log_fd, fd);
}

void rk_log(rk_log_level lvl, const char *component, const char *fmt, ...)
{
    static const char *tags[] = {"DEBUG", "INFO ", "WARN ", "ERROR"};
    if (lvl < rk_log_get_level() || lvl >= RK_LOG_OFF)
        return;
    char line[2048];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof(line), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, ts.tv_nsec / 1000000, tags[lvl]);
    if (component)
        n += snprintf(line + n, sizeof(line) - (size_t)n, "[%s] ", component);
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    va_end(ap);
    if (m < 0)
        m = 0;
    n += m;
    if ((size_t)n > sizeof(line) - 2)
        n = (int)sizeof(line) - 2;
    line[n++] = '\n';
    ssize_t w = write(atomic_load(&log_fd), line, (size_t)n);
    (void)w;
}
