/* Corruption behind ragkv's back: a stored chunk's bytes are flipped on disk while ragkvd is
 * down. The damaged chunk must never be served: by key it is a miss (RK_ERR_NOT_FOUND), and a
 * prompt naming it by its tokens is still answered, recomputing it (and caching it anew). */
#include <criterion/criterion.h>
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ragkv/alloc.h"
#include "ragkv/client.h"
#include "testutil.h"

/* Flip a byte 64 bytes past every "RKC1" chunk-blob magic in the files of dir; returns how many. */
static int corrupt_dir(const char *dir)
{
    DIR *d = opendir(dir);
    int n = 0;
    struct dirent *e;
    while (d && (e = readdir(d))) {
        char p[1024];
        snprintf(p, sizeof(p), "%s/%s", dir, e->d_name);
        struct stat st;
        if (stat(p, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size < 128)
            continue;
        FILE *f = fopen(p, "r+b");
        if (!f)
            continue;
        char *buf = malloc((size_t)st.st_size);
        if (buf && fread(buf, 1, (size_t)st.st_size, f) == (size_t)st.st_size) {
            for (off_t i = 0; i + 68 < st.st_size; i++)
                if (memcmp(buf + i, "RKC1", 4) == 0) {
                    buf[i + 64] ^= 0x5a;
                    fseek(f, (long)(i + 64), SEEK_SET);
                    fputc((unsigned char)buf[i + 64], f);
                    n++;
                }
        }
        free(buf);
        fclose(f);
    }
    if (d)
        closedir(d);
    return n;
}

Test(corruption, damaged_chunks_are_misses_never_served, .timeout = 90)
{
    const char *model = rk_test_model_path("stories260K.bin");
    if (!model)
        cr_skip_test("skipped: no real model");
    char tmp[256], adm[256], tok[256], store[512];
    cr_assert_not_null(rk_test_tmpdir(tmp, sizeof(tmp)));
    const char *extra[] = {"--model", model, NULL};
    rk_test_proc d;
    int port, hport;
    cr_assert(rk_test_daemon_start(tmp, extra, &d, &port, &hport));
    cr_assert(rk_test_admin_token(tmp, adm, sizeof(adm)), "no admin token in %s/var", tmp);
    ragkv_conn *a, *t;
    cr_assert_eq(ragkv_connect("127.0.0.1", port, 20000, &a), RK_OK);
    cr_assert_eq(ragkv_auth(a, adm, NULL, 0), RK_OK);
    cr_assert_eq(ragkv_admin_tenant_create(a, "acme", 0, 0, 0, tok, sizeof(tok)), RK_OK);
    ragkv_close(a);
    cr_assert_eq(ragkv_connect("127.0.0.1", port, 20000, &t), RK_OK);
    cr_assert_eq(ragkv_auth(t, tok, NULL, 0), RK_OK);
    int32_t ch[64];
    for (int i = 0; i < 64; i++)
        ch[i] = 5 + i * 3;
    uint8_t key[32];
    cr_assert_eq(ragkv_put_chunk(t, ch, 64, key, NULL, NULL), RK_OK, "%s", rk_error_msg());
    ragkv_close(t);
    cr_assert_eq(rk_test_stop(&d, SIGTERM, 20000), 0); /* flushed and closed */
    /* damage it on disk (the RocksDB files and blob files of the store) */
    snprintf(store, sizeof(store), "%s/var/store", tmp);
    int hits = corrupt_dir(store);
    DIR *sd = opendir(store);
    struct dirent *e;
    while (sd && (e = readdir(sd))) { /* and one level down (column family or blob dirs) */
        char sub[1024];
        snprintf(sub, sizeof(sub), "%s/%s", store, e->d_name);
        struct stat st;
        if (e->d_name[0] != '.' && stat(sub, &st) == 0 && S_ISDIR(st.st_mode))
            hits += corrupt_dir(sub);
    }
    if (sd)
        closedir(sd);
    cr_assert_gt(hits, 0, "found the stored chunk on disk");
    cr_assert(rk_test_daemon_start(tmp, extra, &d, &port, &hport), "ragkvd starts over damaged data");
    cr_assert_eq(ragkv_connect("127.0.0.1", port, 20000, &t), RK_OK);
    cr_assert_eq(ragkv_auth(t, tok, NULL, 0), RK_OK);
    uint8_t *cont;
    uint32_t len;
    rk_status st = ragkv_get_kv(t, key, NULL, 0, &cont, &len);
    cr_expect_eq(st, RK_ERR_NOT_FOUND, "a damaged chunk is a miss, got %s", rk_status_name(st));
    if (st == RK_OK)
        rk_free(cont);
    const int32_t q[] = {403, 407};
    ragkv_segment seg = {.tokens = ch, .ntokens = 64};
    ragkv_gen_params p = {.segs = &seg, .nsegs = 1, .query = q, .nquery = 2, .blend = 3, .recompute = 0.15f, .max_tokens = 4};
    ragkv_gen_stats gs;
    cr_expect_eq(ragkv_generate(t, &p, NULL, NULL, &gs), RK_OK, "still answered: %s", rk_error_msg());
    cr_expect_eq(gs.chunk_misses, 1, "recomputed, not served damaged");
    /* the miss was cached again, from the tokens the prompt brought */
    int created = -1;
    cr_expect_eq(ragkv_put_chunk(t, ch, 64, key, &created, NULL), RK_OK, "%s", rk_error_msg());
    cr_expect_eq(created, 0, "already cached again by the prompt that missed it");
    cr_expect_eq(ragkv_get_kv(t, key, NULL, 0, &cont, &len), RK_OK);
    rk_free(cont);
    ragkv_close(t);
    cr_expect_eq(rk_test_stop(&d, SIGTERM, 20000), 0);
    rk_test_rmrf(tmp);
}
