/* `ragkv bench store` runs end to end on tiny blobs and writes a JSON table with every row. */
#include "cc_testlib.h"

Test(bench, smoke_tiny_sizes_writes_json)
{
    if (!rk_test_redis_server_path())
        cr_skip_test("skipped: redis-server not on PATH");
    char dir[256], json[300];
    cr_assert_not_null(rk_test_tmpdir(dir, sizeof(dir)));
    snprintf(json, sizeof(json), "%s/out.json", dir);
    char *argv[] = {"store", "--sizes", "16K,64K", "--mib", "1", "--rounds", "1", "--json", json, NULL};
    cr_assert_eq(cc_bench_main(9, argv), 0);
    FILE *f = fopen(json, "r");
    cr_assert_not_null(f);
    char buf[8192];
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    buf[n] = 0;
    fclose(f);
    int rows = 0;
    for (char *p = buf; (p = strstr(p, "\"op\"")); p++)
        rows++;
    cr_expect_eq(rows, 10, "5 rows per size (store put, ram get, rocksdb get, redis set, redis get)");
    cr_expect(strstr(buf, "\"backend\":\"store:rocksdb\"") != NULL);
    char *bad[] = {"store", "--sizes", "zero", NULL};
    cr_expect_eq(cc_bench_main(3, bad), 2, "a bad size is a usage error");
    rk_test_rmrf(dir);
}
