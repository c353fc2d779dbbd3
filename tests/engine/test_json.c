/* The strict JSON parser (common/json.c, used by the engine's model loaders). */
#include <criterion/criterion.h>
#include <string.h>

#include "ragkv/json.h"

static rk_status parse(const char *s, rk_json **j)
{
    return rk_json_parse(s, strlen(s), j);
}

Test(json, values_and_accessors)
{
    rk_json *j;
    const char *text = " {\"a\": 1, \"b\": -2.5e3, \"c\": [true, false, null, \"x\\u00e9\\ud83d\\ude00\\n\"],"
                       " \"d\": {\"e\": 9007199254740993}, \"f\": 0, \"g\": -0.0} \n";
    cr_assert_eq(parse(text, &j), RK_OK, "%s", rk_error_msg());
    int64_t i;
    double d;
    cr_expect(rk_json_get_int(j, "a", &i) && i == 1);
    cr_expect(!rk_json_get_int(j, "b", &i), "-2.5e3 is not an integer literal");
    cr_expect(rk_json_get_num(j, "b", &d) && d == -2500.0);
    const rk_json *c = rk_json_get(j, "c");
    cr_assert(c && c->type == RK_JSON_ARRAY && c->len == 4);
    cr_expect(c->items[0].type == RK_JSON_BOOL && c->items[0].boolean);
    cr_expect(c->items[2].type == RK_JSON_NULL);
    cr_expect_str_eq(c->items[3].str, "x\xc3\xa9\xf0\x9f\x98\x80\n");
    cr_expect(rk_json_get_int(rk_json_get(j, "d"), "e", &i) && i == 9007199254740993LL, "exact int64");
    cr_expect_null(rk_json_get(j, "zz"));
    cr_expect_null(rk_json_get_str(j, "a"));
    rk_json_free(j);
    rk_json_free(NULL);
}

Test(json, strictness)
{
    const char *bad[] = {
        "",               "{",         "{\"a\":1,}",     "[1,]",         "01",          "1.",
        ".5",             "+1",        "{'a':1}",        "{\"a\" 1}",    "[1 2]",       "tru",
        "nul",            "\"a",       "\"\\x\"",        "\"\\u12\"",    "\"\\ud800\"", "\"\\udc00\"",
        "\"\x01\"",       "\"\xff\"",  "\"\xc0\x80\"",   "\"\xed\xa0\x80\"", "{\"a\":1,\"a\":2}", "1 2",
        "// c\n1",        "NaN",       "Infinity",       "1e999",        "{\"a\":1}}",  "[\"\\ud83d\\u0041\"]",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        rk_json *j = (rk_json *)1;
        cr_expect_eq(parse(bad[i], &j), RK_ERR_FORMAT, "accepted: %s", bad[i]);
        cr_expect_null(j);
    }
    /* a key with an embedded NUL */
    rk_json *j;
    cr_expect_eq(rk_json_parse("{\"a\\u0000b\":1}", 14, &j), RK_ERR_FORMAT);
    /* nesting limit */
    char deep[300];
    memset(deep, '[', 200);
    deep[200] = 0;
    cr_expect_eq(parse(deep, &j), RK_ERR_FORMAT);
    cr_expect(strstr(rk_error_msg(), "deep") != NULL, "%s", rk_error_msg());
    char ok[200];
    memset(ok, '[', 60);
    memset(ok + 60, ']', 60);
    ok[120] = 0;
    cr_expect_eq(parse(ok, &j), RK_OK, "60 levels are fine");
    rk_json_free(j);
    /* the offset is reported */
    cr_expect_eq(parse("{\"a\": [1, 2,, 3]}", &j), RK_ERR_FORMAT);
    cr_expect(strstr(rk_error_msg(), "byte 12") != NULL, "%s", rk_error_msg());
}
