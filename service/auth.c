/* auth.c — tenant tokens, the admin credential, and failed-attempt limiting. */
#define RK_LOG_COMPONENT "auth"
#include "ragkv/svc_auth.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ragkv/alloc.h"
#include "ragkv/hash.h"
#include "ragkv/log.h"

#define HASH_BYTES 32
#define LIMIT_SLOTS 1024

struct tenant_cred {
    char name[SVC_NAME_MAX];
    uint8_t hash[HASH_BYTES]; /* BLAKE2b-256 of the token */
};

struct limit_slot {
    char addr[64];        /* client address, "" when free */
    uint64_t window_start;/* seconds */
    int failures;         /* within the window */
};

struct svc_auth {
    pthread_mutex_t lock;          /* guards everything below */
    char dir[1024];                /* DATA_DIR/auth */
    char tenants_path[1100];       /* DATA_DIR/auth/tenants */
    char admin_path[1100];         /* DATA_DIR/admin.token */
    uint8_t admin_hash[HASH_BYTES];
    struct tenant_cred *creds;     /* (ncreds), unsorted */
    size_t ncreds, cap;
    int max_failures, window_s;
    struct limit_slot slots[LIMIT_SLOTS]; /* open-addressed by hash of the address */
};

static void hash_token(const char *token, uint8_t out[HASH_BYTES])
{
    rk_blake2b(out, HASH_BYTES, token, strlen(token));
}

/* "rk_" + base64url of 24 random bytes (192 bits). */
static void make_token(char out[SVC_TOKEN_MAX])
{
    uint8_t raw[24];
    randombytes_buf(raw, sizeof(raw));
    memcpy(out, "rk_", 3);
    sodium_bin2base64(out + 3, SVC_TOKEN_MAX - 3, raw, sizeof(raw), sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    sodium_memzero(raw, sizeof(raw));
}

bool svc_auth_name_valid(const char *name)
{
    size_t n = name ? strlen(name) : 0;
    if (n == 0 || n > 64 || strcmp(name, SVC_ADMIN_TENANT) == 0)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)name[i]) && name[i] != '.' && name[i] != '_' && name[i] != '-')
            return false;
    return name[0] != '.';
}

static struct tenant_cred *find(svc_auth *a, const char *name)
{
    for (size_t i = 0; i < a->ncreds; i++)
        if (strcmp(a->creds[i].name, name) == 0)
            return &a->creds[i];
    return NULL;
}

/* Rewrite the tenants file atomically: temp file, fsync, rename, fsync the directory. */
static rk_status save(svc_auth *a)
{
    char tmp[1200];
    snprintf(tmp, sizeof(tmp), "%s.tmp", a->tenants_path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return rk_error_set(RK_ERR_IO, "%s: %s", tmp, strerror(errno));
    FILE *f = fdopen(fd, "w");
    if (!f) {
        close(fd);
        return rk_error_set(RK_ERR_IO, "%s: %s", tmp, strerror(errno));
    }
    fprintf(f, "# ragkv tenant credentials: name blake2b-256(token); do not edit while ragkvd runs\n");
    for (size_t i = 0; i < a->ncreds; i++) {
        char hex[2 * HASH_BYTES + 1];
        fprintf(f, "%s %s\n", a->creds[i].name, rk_hex(hex, a->creds[i].hash, HASH_BYTES));
    }
    bool ok = fflush(f) == 0 && fsync(fileno(f)) == 0;
    ok = (fclose(f) == 0) && ok;
    if (!ok || rename(tmp, a->tenants_path) != 0) {
        unlink(tmp);
        return rk_error_set(RK_ERR_IO, "%s: %s", a->tenants_path, strerror(errno));
    }
    int dfd = open(a->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    return RK_OK;
}

static rk_status load(svc_auth *a)
{
    FILE *f = fopen(a->tenants_path, "r");
    if (!f)
        return errno == ENOENT ? RK_OK : rk_error_set(RK_ERR_IO, "%s: %s", a->tenants_path, strerror(errno));
    char line[512], name[SVC_NAME_MAX], hex[2 * HASH_BYTES + 8];
    int lineno = 0;
    rk_status st = RK_OK;
    while (fgets(line, sizeof(line), f)) {
        lineno++;
        if (line[0] == '#' || line[0] == '\n')
            continue;
        struct tenant_cred c;
        if (sscanf(line, "%255s %70s", name, hex) != 2 || !svc_auth_name_valid(name) ||
            rk_unhex(c.hash, HASH_BYTES, hex) != RK_OK) {
            st = rk_error_set(RK_ERR_FORMAT, "%s:%d: malformed credential line", a->tenants_path, lineno);
            break;
        }
        snprintf(c.name, sizeof(c.name), "%s", name);
        if (a->ncreds == a->cap) {
            size_t cap = a->cap ? 2 * a->cap : 16;
            struct tenant_cred *n = rk_realloc(a->creds, cap * sizeof(*n));
            if (!n) {
                st = RK_ERR_NOMEM;
                break;
            }
            a->creds = n;
            a->cap = cap;
        }
        a->creds[a->ncreds++] = c;
    }
    fclose(f);
    return st;
}

/* Read the admin token file, or create it (0600) with a fresh token. */
static rk_status admin_init(svc_auth *a)
{
    char token[SVC_TOKEN_MAX + 2] = "";
    FILE *f = fopen(a->admin_path, "r");
    if (f) {
        if (!fgets(token, sizeof(token), f))
            token[0] = '\0';
        fclose(f);
        token[strcspn(token, "\r\n")] = '\0';
        if (strlen(token) < 16)
            return rk_error_set(RK_ERR_FORMAT, "%s: admin token missing or too short", a->admin_path);
    } else {
        make_token(token);
        int fd = open(a->admin_path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd < 0)
            return rk_error_set(RK_ERR_IO, "%s: %s", a->admin_path, strerror(errno));
        size_t n = strlen(token);
        token[n] = '\n';
        bool ok = write(fd, token, n + 1) == (ssize_t)(n + 1) && fsync(fd) == 0;
        close(fd);
        token[n] = '\0';
        if (!ok)
            return rk_error_set(RK_ERR_IO, "%s: %s", a->admin_path, strerror(errno));
        RK_INFO("created the admin credential in %s (mode 0600)", a->admin_path);
    }
    hash_token(token, a->admin_hash);
    sodium_memzero(token, sizeof(token));
    return RK_OK;
}

rk_status svc_auth_open(const char *data_dir, svc_auth **out)
{
    if (sodium_init() < 0)
        return rk_error_set(RK_ERR_INTERNAL, "libsodium failed to initialise");
    svc_auth *a = rk_calloc(1, sizeof(*a));
    if (!a)
        return RK_ERR_NOMEM;
    pthread_mutex_init(&a->lock, NULL);
    a->max_failures = 10;
    a->window_s = 60;
    snprintf(a->dir, sizeof(a->dir), "%s/auth", data_dir);
    snprintf(a->tenants_path, sizeof(a->tenants_path), "%s/tenants", a->dir);
    snprintf(a->admin_path, sizeof(a->admin_path), "%s/admin.token", data_dir);
    rk_status st;
    if (mkdir(a->dir, 0700) != 0 && errno != EEXIST) {
        st = rk_error_set(RK_ERR_IO, "%s: %s", a->dir, strerror(errno));
        goto fail;
    }
    if ((st = load(a)) != RK_OK || (st = admin_init(a)) != RK_OK)
        goto fail;
    *out = a;
    return RK_OK;
fail:
    svc_auth_close(a);
    return st;
}

void svc_auth_close(svc_auth *a)
{
    if (!a)
        return;
    if (a->creds)
        sodium_memzero(a->creds, a->cap * sizeof(*a->creds));
    rk_free(a->creds);
    pthread_mutex_destroy(&a->lock);
    rk_free(a);
}

rk_status svc_auth_reload(svc_auth *a)
{
    pthread_mutex_lock(&a->lock);
    struct tenant_cred *old = a->creds;
    size_t on = a->ncreds, oc = a->cap;
    a->creds = NULL;
    a->ncreds = a->cap = 0;
    rk_status st = load(a);
    if (st != RK_OK) { /* keep what we had */
        rk_free(a->creds);
        a->creds = old;
        a->ncreds = on;
        a->cap = oc;
    } else {
        if (old)
            sodium_memzero(old, oc * sizeof(*old));
        rk_free(old);
    }
    pthread_mutex_unlock(&a->lock);
    return st;
}

const char *svc_auth_admin_token_path(const svc_auth *a)
{
    return a->admin_path;
}

rk_status svc_auth_check(svc_auth *a, const char *token, char *tenant, bool *is_admin)
{
    uint8_t h[HASH_BYTES];
    hash_token(token ? token : "", h);
    rk_status st = rk_error_set(RK_ERR_AUTH, "unknown token");
    pthread_mutex_lock(&a->lock);
    /* compare against every credential in constant time, whatever matches */
    int admin = sodium_memcmp(h, a->admin_hash, HASH_BYTES) == 0;
    size_t match = SIZE_MAX;
    for (size_t i = 0; i < a->ncreds; i++)
        if (sodium_memcmp(h, a->creds[i].hash, HASH_BYTES) == 0)
            match = i;
    if (admin) {
        snprintf(tenant, SVC_NAME_MAX, "%s", SVC_ADMIN_TENANT);
        *is_admin = true;
        st = RK_OK;
    } else if (match != SIZE_MAX) {
        snprintf(tenant, SVC_NAME_MAX, "%s", a->creds[match].name);
        *is_admin = false;
        st = RK_OK;
    }
    pthread_mutex_unlock(&a->lock);
    return st;
}

rk_status svc_auth_tenant_add(svc_auth *a, const char *name, char *token_out)
{
    if (!svc_auth_name_valid(name))
        return rk_error_set(RK_ERR_INVALID, "tenant name '%s': use 1-64 of A-Z a-z 0-9 . _ - (not 'admin')",
                            name ? name : "");
    pthread_mutex_lock(&a->lock);
    rk_status st = RK_OK;
    if (find(a, name)) {
        st = rk_error_set(RK_ERR_EXISTS, "tenant '%s' exists", name);
        goto out;
    }
    if (a->ncreds == a->cap) {
        size_t cap = a->cap ? 2 * a->cap : 16;
        struct tenant_cred *n = rk_realloc(a->creds, cap * sizeof(*n));
        if (!n) {
            st = RK_ERR_NOMEM;
            goto out;
        }
        a->creds = n;
        a->cap = cap;
    }
    struct tenant_cred *c = &a->creds[a->ncreds];
    snprintf(c->name, sizeof(c->name), "%s", name);
    make_token(token_out);
    hash_token(token_out, c->hash);
    a->ncreds++;
    if ((st = save(a)) != RK_OK) {
        a->ncreds--; /* not durable: not created */
        sodium_memzero(token_out, SVC_TOKEN_MAX);
    }
out:
    pthread_mutex_unlock(&a->lock);
    return st;
}

rk_status svc_auth_tenant_rotate(svc_auth *a, const char *name, char *token_out)
{
    pthread_mutex_lock(&a->lock);
    rk_status st;
    struct tenant_cred *c = find(a, name ? name : "");
    if (!c) {
        st = rk_error_set(RK_ERR_NOT_FOUND, "no tenant '%s'", name ? name : "");
    } else {
        uint8_t old[HASH_BYTES];
        memcpy(old, c->hash, HASH_BYTES);
        make_token(token_out);
        hash_token(token_out, c->hash);
        if ((st = save(a)) != RK_OK) {
            memcpy(c->hash, old, HASH_BYTES);
            sodium_memzero(token_out, SVC_TOKEN_MAX);
        }
    }
    pthread_mutex_unlock(&a->lock);
    return st;
}

rk_status svc_auth_tenant_remove(svc_auth *a, const char *name)
{
    pthread_mutex_lock(&a->lock);
    rk_status st = RK_OK;
    struct tenant_cred *c = find(a, name ? name : "");
    if (!c) {
        st = rk_error_set(RK_ERR_NOT_FOUND, "no tenant '%s'", name ? name : "");
    } else {
        struct tenant_cred saved = *c;
        *c = a->creds[--a->ncreds];
        if ((st = save(a)) != RK_OK) { /* undo */
            a->creds[a->ncreds++] = *c;
            *c = saved;
        }
    }
    pthread_mutex_unlock(&a->lock);
    return st;
}

bool svc_auth_tenant_exists(svc_auth *a, const char *name)
{
    pthread_mutex_lock(&a->lock);
    bool r = find(a, name ? name : "") != NULL;
    pthread_mutex_unlock(&a->lock);
    return r;
}

static int cmp_str(const void *x, const void *y)
{
    return strcmp(*(char *const *)x, *(char *const *)y);
}

rk_status svc_auth_tenant_list(svc_auth *a, char ***names, size_t *n)
{
    pthread_mutex_lock(&a->lock);
    char **v = rk_calloc(a->ncreds ? a->ncreds : 1, sizeof(char *));
    size_t k = 0;
    for (; v && k < a->ncreds; k++)
        if (!(v[k] = rk_strdup(a->creds[k].name)))
            break;
    bool ok = v && k == a->ncreds;
    pthread_mutex_unlock(&a->lock);
    if (!ok) {
        svc_auth_names_free(v, k);
        return RK_ERR_NOMEM;
    }
    qsort(v, k, sizeof(char *), cmp_str);
    *names = v;
    *n = k;
    return RK_OK;
}

void svc_auth_names_free(char **names, size_t n)
{
    for (size_t i = 0; names && i < n; i++)
        rk_free(names[i]);
    rk_free(names);
}

void svc_auth_limit_config(svc_auth *a, int max_failures, int window_s)
{
    pthread_mutex_lock(&a->lock);
    a->max_failures = max_failures;
    a->window_s = window_s;
    pthread_mutex_unlock(&a->lock);
}

/* The slot for addr (linear probing; a full table reuses the oldest window in the probe run). */
static struct limit_slot *slot_for(svc_auth *a, const char *addr, uint64_t now_s, bool create)
{
    uint64_t h = rk_xxh3_64(addr, strlen(addr));
    struct limit_slot *oldest = NULL;
    for (int i = 0; i < 16; i++) {
        struct limit_slot *s = &a->slots[(h + (uint64_t)i) % LIMIT_SLOTS];
        if (strcmp(s->addr, addr) == 0)
            return s;
        bool stale = !s->addr[0] || now_s - s->window_start >= (uint64_t)a->window_s;
        if (create && stale) {
            snprintf(s->addr, sizeof(s->addr), "%s", addr);
            s->window_start = now_s;
            s->failures = 0;
            return s;
        }
        if (!oldest || s->window_start < oldest->window_start)
            oldest = s;
    }
    if (create && oldest) {
        snprintf(oldest->addr, sizeof(oldest->addr), "%s", addr);
        oldest->window_start = now_s;
        oldest->failures = 0;
        return oldest;
    }
    return NULL;
}

bool svc_auth_allowed(svc_auth *a, const char *addr, uint64_t now_s)
{
    pthread_mutex_lock(&a->lock);
    struct limit_slot *s = slot_for(a, addr, now_s, false);
    bool ok = !s || now_s - s->window_start >= (uint64_t)a->window_s || s->failures < a->max_failures;
    pthread_mutex_unlock(&a->lock);
    return ok;
}

void svc_auth_failed(svc_auth *a, const char *addr, uint64_t now_s)
{
    pthread_mutex_lock(&a->lock);
    struct limit_slot *s = slot_for(a, addr, now_s, true);
    if (s) {
        if (now_s - s->window_start >= (uint64_t)a->window_s) {
            s->window_start = now_s;
            s->failures = 0;
        }
        s->failures++;
    }
    pthread_mutex_unlock(&a->lock);
}
