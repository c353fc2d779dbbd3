/* status.c — rk_status names and the per-thread error detail. */
#include "ragkv/status.h"

#include <stdarg.h>
#include <stdio.h>

static _Thread_local char tls_errmsg[256];

struct status_desc {
    rk_status code;
    const char *name;
    const char *text;
};

static const struct status_desc status_table[] = {
    {RK_OK, "RK_OK", "success"},
    {RK_ERR_NOMEM, "RK_ERR_NOMEM", "out of memory"},
    {RK_ERR_INVALID, "RK_ERR_INVALID", "invalid argument"},
    {RK_ERR_IO, "RK_ERR_IO", "I/O error"},
    {RK_ERR_FORMAT, "RK_ERR_FORMAT", "malformed input"},
    {RK_ERR_TRUNCATED, "RK_ERR_TRUNCATED", "input truncated"},
    {RK_ERR_CORRUPT, "RK_ERR_CORRUPT", "checksum mismatch (corrupt data)"},
    {RK_ERR_UNSUPPORTED, "RK_ERR_UNSUPPORTED", "unsupported"},
    {RK_ERR_NOT_FOUND, "RK_ERR_NOT_FOUND", "not found"},
    {RK_ERR_EXISTS, "RK_ERR_EXISTS", "already exists"},
    {RK_ERR_RANGE, "RK_ERR_RANGE", "value out of range"},
    {RK_ERR_LIMIT, "RK_ERR_LIMIT", "limit exceeded"},
    {RK_ERR_QUOTA, "RK_ERR_QUOTA", "quota exceeded"},
    {RK_ERR_AUTH, "RK_ERR_AUTH", "authentication failed"},
    {RK_ERR_DENIED, "RK_ERR_DENIED", "permission denied"},
    {RK_ERR_PROTOCOL, "RK_ERR_PROTOCOL", "protocol error"},
    {RK_ERR_TIMEOUT, "RK_ERR_TIMEOUT", "timed out"},
    {RK_ERR_UNAVAILABLE, "RK_ERR_UNAVAILABLE", "backend unavailable"},
    {RK_ERR_BUSY, "RK_ERR_BUSY", "busy, try again"},
    {RK_ERR_CANCELLED, "RK_ERR_CANCELLED", "cancelled"},
    {RK_ERR_SHUTDOWN, "RK_ERR_SHUTDOWN", "shutting down"},
    {RK_ERR_DEVICE, "RK_ERR_DEVICE", "accelerator error"},
    {RK_ERR_STORE, "RK_ERR_STORE", "blob store error"},
    {RK_ERR_META, "RK_ERR_META", "metadata store error"},
    {RK_ERR_INTERNAL, "RK_ERR_INTERNAL", "internal error"},
    {RK_ERR_NOT_IMPLEMENTED, "RK_ERR_NOT_IMPLEMENTED", "not implemented"},
};

static const struct status_desc *status_find(rk_status st)
{
    for (size_t i = 0; i < sizeof(status_table) / sizeof(status_table[0]); i++)
        if (status_table[i].code == st)
            return &status_table[i];
    return NULL;
}

const char *rk_strerror(rk_status st)
{
    const struct status_desc *d = status_find(st);
    return d ? d->text : "unknown error";
}

const char *rk_status_name(rk_status st)
{
    const struct status_desc *d = status_find(st);
    return d ? d->name : "RK_ERR_UNKNOWN";
}

rk_status rk_error_set(rk_status st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tls_errmsg, sizeof(tls_errmsg), fmt, ap);
    va_end(ap);
    return st;
}

const char *rk_error_msg(void)
{
    return tls_errmsg;
}

void rk_error_clear(void)
{
    tls_errmsg[0] = '\0';
}
