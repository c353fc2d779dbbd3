/* Tenant credentials (service/auth.c): tokens, hashing at rest, persistence, rotation,
 * failed-attempt limiting. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "ragkv/svc_auth.h"
#include "testutil.h"

static char tmp[256];
static void setup(void) { cr_assert_not_null(rk_test_tmpdir(tmp, sizeof(tmp))); }
static void teardown(void) { rk_test_rmrf(tmp); }
TestSuite(auth, .init = setup, .fini = teardown);

static void read_file(const char *path, char *buf, size_t len)
{
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f, "%s", path);
    size_t n = fread(buf, 1, len - 1, f);
    buf[n] = '\0';
    fclose(f);
}

Test(auth, tokens_work_and_are_stored_hashed)
{
    svc_auth *a;
    cr_assert_eq(svc_auth_open(tmp, &a), RK_OK, "%s", rk_error_msg());
    char t1[SVC_TOKEN_MAX], t2[SVC_TOKEN_MAX], who[SVC_NAME_MAX];
    bool admin = true;
    cr_assert_eq(svc_auth_tenant_add(a, "acme", t1), RK_OK);
    cr_assert_eq(svc_auth_tenant_add(a, "globex", t2), RK_OK);
    cr_expect_geq(strlen(t1), 3 + 32, "at least 192 bits of base64url after rk_");
    cr_expect_str_neq(t1, t2);
    cr_assert_eq(svc_auth_check(a, t1, who, &admin), RK_OK);
    cr_expect_str_eq(who, "acme");
    cr_expect(!admin);
    cr_assert_eq(svc_auth_check(a, t2, who, &admin), RK_OK);
    cr_expect_str_eq(who, "globex");
    cr_expect_eq(svc_auth_check(a, "rk_wrong", who, &admin), RK_ERR_AUTH);
    cr_expect_eq(svc_auth_check(a, "", who, &admin), RK_ERR_AUTH);
    cr_expect_eq(svc_auth_tenant_add(a, "acme", t2), RK_ERR_EXISTS);
    cr_expect_eq(svc_auth_tenant_add(a, "admin", t2), RK_ERR_INVALID);
    cr_expect_eq(svc_auth_tenant_add(a, "bad name", t2), RK_ERR_INVALID);
    cr_expect_eq(svc_auth_tenant_add(a, "../x", t2), RK_ERR_INVALID);
    /* nothing on disk contains a token */
    char path[512], text[4096];
    snprintf(path, sizeof(path), "%s/auth/tenants", tmp);
    read_file(path, text, sizeof(text));
    cr_expect(strstr(text, "acme ") && !strstr(text, t1), "%s", text);
    /* the admin credential: a 0600 file, accepted as admin */
    struct stat st;
    cr_assert_eq(stat(svc_auth_admin_token_path(a), &st), 0);
    cr_expect_eq(st.st_mode & 0777, 0600);
    char admin_tok[256];
    read_file(svc_auth_admin_token_path(a), admin_tok, sizeof(admin_tok));
    admin_tok[strcspn(admin_tok, "\n")] = '\0';
    cr_assert_eq(svc_auth_check(a, admin_tok, who, &admin), RK_OK);
    cr_expect(admin);
    cr_expect_str_eq(who, "admin");
    svc_auth_close(a);
}

Test(auth, persistence_rotation_and_removal)
{
    svc_auth *a;
    char t1[SVC_TOKEN_MAX], t1b[SVC_TOKEN_MAX], who[SVC_NAME_MAX];
    bool admin;
    cr_assert_eq(svc_auth_open(tmp, &a), RK_OK);
    cr_assert_eq(svc_auth_tenant_add(a, "acme", t1), RK_OK);
    svc_auth_close(a);
    /* reopened: the tenant and its token survive, and the admin credential is unchanged */
    cr_assert_eq(svc_auth_open(tmp, &a), RK_OK);
    cr_expect_eq(svc_auth_check(a, t1, who, &admin), RK_OK);
    cr_assert_eq(svc_auth_tenant_rotate(a, "acme", t1b), RK_OK);
    cr_expect_eq(svc_auth_check(a, t1, who, &admin), RK_ERR_AUTH, "old token dead");
    cr_expect_eq(svc_auth_check(a, t1b, who, &admin), RK_OK);
    cr_expect_eq(svc_auth_tenant_rotate(a, "nobody", t1b), RK_ERR_NOT_FOUND);
    char **names;
    size_t n;
    cr_assert_eq(svc_auth_tenant_list(a, &names, &n), RK_OK);
    cr_expect_eq(n, 1);
    cr_expect_str_eq(names[0], "acme");
    svc_auth_names_free(names, n);
    cr_assert_eq(svc_auth_tenant_remove(a, "acme"), RK_OK);
    cr_expect_eq(svc_auth_check(a, t1b, who, &admin), RK_ERR_AUTH);
    cr_expect(!svc_auth_tenant_exists(a, "acme"));
    svc_auth_close(a);
    cr_assert_eq(svc_auth_open(tmp, &a), RK_OK);
    cr_expect(!svc_auth_tenant_exists(a, "acme"), "removal persisted");
    svc_auth_close(a);
}

Test(auth, failed_attempts_are_limited_per_address)
{
    svc_auth *a;
    cr_assert_eq(svc_auth_open(tmp, &a), RK_OK);
    svc_auth_limit_config(a, 3, 60);
    for (int i = 0; i < 3; i++) {
        cr_expect(svc_auth_allowed(a, "10.0.0.1", 1000));
        svc_auth_failed(a, "10.0.0.1", 1000);
    }
    cr_expect(!svc_auth_allowed(a, "10.0.0.1", 1010), "blocked inside the window");
    cr_expect(svc_auth_allowed(a, "10.0.0.2", 1010), "other addresses unaffected");
    cr_expect(svc_auth_allowed(a, "10.0.0.1", 1061), "allowed again after the window");
    svc_auth_close(a);
}

Test(auth, corrupt_credential_file_is_a_clear_error)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/auth", tmp);
    mkdir(path, 0700);
    snprintf(path, sizeof(path), "%s/auth/tenants", tmp);
    FILE *f = fopen(path, "w");
    fputs("acme nothex\n", f);
    fclose(f);
    svc_auth *a;
    cr_expect_eq(svc_auth_open(tmp, &a), RK_ERR_FORMAT);
    cr_expect(strstr(rk_error_msg(), "tenants:1"), "%s", rk_error_msg());
}
