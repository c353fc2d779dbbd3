/*
 * ragkv/svc_auth.h — tenant credentials: tokens of 192 random bits, shown once, stored only
 * as BLAKE2b-256 hashes, compared in constant time; the admin credential; and a limit on failed
 * attempts per client address.
 *
 *     svc_auth *a;
 *     svc_auth_open("./var", &a);                 // loads ./var/auth/tenants, makes admin.token
 *     char token[SVC_TOKEN_MAX];
 *     svc_auth_tenant_add(a, "acme", token);        // give `token` to the tenant, once
 *     char tenant[SVC_NAME_MAX]; bool admin;
 *     if (svc_auth_check(a, presented, tenant, &admin) == RK_OK) ...
 *
 * Storage: DATA_DIR/auth/tenants holds one "name hexhash" line per tenant, replaced atomically
 * (write, fsync, rename) on every change; DATA_DIR/admin.token (mode 0600) holds the admin
 * credential, created on first start. Thread-safe: one mutex guards the table.
 */
#ifndef RAGKV_SVC_AUTH_H
#define RAGKV_SVC_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ragkv/status.h"
#include "ragkv/svc_request.h"

#ifdef __cplusplus
extern "C" {
#endif

#define SVC_TOKEN_MAX 64 /* "rk_" + 32 base64url characters + NUL fits */
#define SVC_ADMIN_TENANT "admin"

typedef struct svc_auth svc_auth;

/* Open (creating) the credential store under data_dir. *out freed by svc_auth_close. */
rk_status svc_auth_open(const char *data_dir, svc_auth **out);
void svc_auth_close(svc_auth *a);

/* Re-read the tenants file (after a restore, or an edit while stopped); on a bad file the old
 * table stays and the error is returned. */
rk_status svc_auth_reload(svc_auth *a);

/* Path of the admin token file (inside the store; valid until close). */
const char *svc_auth_admin_token_path(const svc_auth *a);

/* Check a presented token. RK_OK with tenant (SVC_NAME_MAX bytes) and *is_admin filled;
 * RK_ERR_AUTH for an unknown token (the same answer whatever the token is). */
rk_status svc_auth_check(svc_auth *a, const char *token, char *tenant, bool *is_admin);

/* Tenant names: 1..64 bytes of [A-Za-z0-9._-], not "admin". */
bool svc_auth_name_valid(const char *name);

/* Add a tenant with a fresh token written to token_out (SVC_TOKEN_MAX bytes): the only time
 * the token exists outside the client. RK_ERR_EXISTS, RK_ERR_INVALID for a bad name. */
rk_status svc_auth_tenant_add(svc_auth *a, const char *name, char *token_out);

/* Replace a tenant's token; the old one stops working at once. RK_ERR_NOT_FOUND. */
rk_status svc_auth_tenant_rotate(svc_auth *a, const char *name, char *token_out);

/* Remove a tenant's credential. RK_ERR_NOT_FOUND. */
rk_status svc_auth_tenant_remove(svc_auth *a, const char *name);

/* 1 when the tenant exists. */
bool svc_auth_tenant_exists(svc_auth *a, const char *name);

/* Names of all tenants, sorted: *names is an array of n strings (free with
 * svc_auth_names_free). */
rk_status svc_auth_tenant_list(svc_auth *a, char ***names, size_t *n);
void svc_auth_names_free(char **names, size_t n);

/* Failed-attempt limiting per client address (an opaque string such as "127.0.0.1").
 * svc_auth_allowed: false while addr has made max_failures failures within window_s;
 * svc_auth_failed records one failure. now_s is a monotonic clock in seconds. */
void svc_auth_limit_config(svc_auth *a, int max_failures, int window_s);
bool svc_auth_allowed(svc_auth *a, const char *addr, uint64_t now_s);
void svc_auth_failed(svc_auth *a, const char *addr, uint64_t now_s);

#ifdef __cplusplus
}
#endif
#endif
