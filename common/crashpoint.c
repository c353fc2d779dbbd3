/* crashpoint.c — see ragkv/crashpoint.h. Always built (a few bytes); only RAGKV_CRASHPOINTS
 * builds have call sites. */
#include "ragkv/crashpoint.h"

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The selected point, parsed once from $RAGKV_CRASHPOINT; guarded by cp_once, then read-only. */
static pthread_once_t cp_once = PTHREAD_ONCE_INIT;
static char cp_name[64];       /* "" when no point is selected */
static unsigned long cp_nth;   /* which arrival kills (1-based) */
/* Arrivals at the selected point so far (other points are not counted). */
static unsigned long cp_count;
static pthread_mutex_t cp_lock = PTHREAD_MUTEX_INITIALIZER;

static void cp_parse(void)
{
    const char *v = getenv("RAGKV_CRASHPOINT");
    if (!v || !*v)
        return;
    snprintf(cp_name, sizeof(cp_name), "%s", v);
    cp_nth = 1;
    char *colon = strchr(cp_name, ':');
    if (colon) {
        *colon = '\0';
        long n = strtol(colon + 1, NULL, 10);
        cp_nth = n > 0 ? (unsigned long)n : 1;
    }
}

void rk_crashpoint(const char *name)
{
    pthread_once(&cp_once, cp_parse);
    if (!cp_name[0] || !name || strcmp(name, cp_name) != 0)
        return;
    pthread_mutex_lock(&cp_lock);
    unsigned long n = ++cp_count;
    pthread_mutex_unlock(&cp_lock);
    if (n != cp_nth)
        return;
    /* one line on stderr (write(2): no stdio buffering to lose), then die like a power cut */
    char msg[128];
    int len = snprintf(msg, sizeof(msg), "crashpoint %s:%lu reached: SIGKILL\n", name, n);
    if (len > 0 && write(2, msg, (size_t)len) < 0) {
        /* nothing to do: we are about to die anyway */
    }
    kill(getpid(), SIGKILL);
    _exit(137); /* not reached */
}
