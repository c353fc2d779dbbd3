/*
 * Malformed inputs: llama2.c checkpoints, Hugging Face folders, safetensors headers and
 * tokenizer files that are truncated, inconsistent or unsupported are rejected with the right
 * status and a message that names the problem. Sharded folders load.
 */
#define _GNU_SOURCE
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "ragkv/bytes.h"
#include "ragkv/engine.h"
#include "ragkv/safetensors.h"
#include "ragkv/tokenizer.h"
#include "testutil.h"

static char tmp[512];

static void setup(void)
{
    cr_assert_not_null(rk_test_tmpdir(tmp, sizeof(tmp)));
}

static void teardown(void)
{
    rk_test_rmrf(tmp);
}

TestSuite(malformed, .init = setup, .fini = teardown);

static void write_file(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    cr_assert_not_null(f, "create %s", path);
    cr_assert_eq(fwrite(data, 1, n, f), n);
    fclose(f);
}

static uint8_t *read_file(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "open %s", path);
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc((size_t)len + 1);
    cr_assert_eq(fread(b, 1, (size_t)len, f), (size_t)len);
    fclose(f);
    *n = (size_t)len;
    return b;
}

/* Open path expecting status want and a message containing needle. */
static void expect_reject(const char *path, rk_status want, const char *needle)
{
    eng_model *m = (eng_model *)1;
    rk_status st = eng_model_open(path, &m);
    cr_expect_eq(st, want, "%s: got %s (%s), want %s", path, rk_status_name(st), rk_error_msg(), rk_status_name(want));
    cr_expect_null(m);
    cr_expect(strstr(rk_error_msg(), needle) != NULL, "message '%s' lacks '%s'", rk_error_msg(), needle);
    if (st == RK_OK)
        eng_model_close(m);
}

/* A llama2.c header followed by `floats` zero floats. */
static void write_l2c(const char *path, const int32_t hdr[7], size_t floats)
{
    size_t n = 28 + floats * 4;
    uint8_t *b = calloc(1, n);
    for (int i = 0; i < 7; i++)
        rk_put_le32(b + 4 * i, (uint32_t)hdr[i]);
    write_file(path, b, n);
    free(b);
}

/* Floats in a llama2.c file of this shape (shared classifier). */
static size_t l2c_floats(int d, int f, int L, int H, int KV, int V, int S)
{
    size_t hs = (size_t)(d / H), kv = (size_t)KV * hs;
    return (size_t)V * d + (size_t)L * d * 2 + (size_t)L * d * d * 2 + 2 * (size_t)L * d * kv + 3 * (size_t)L * f * d +
           d + (size_t)S * hs;
}

Test(malformed, llama2c_sizes)
{
    char p[600];
    snprintf(p, sizeof(p), "%s/m.bin", tmp);
    int32_t ok[7] = {16, 32, 2, 4, 2, 20, 8};
    size_t n = l2c_floats(16, 32, 2, 4, 2, 20, 8);
    write_l2c(p, ok, n);
    eng_model *m;
    cr_assert_eq(eng_model_open(p, &m), RK_OK, "a well-formed (zero) model loads: %s", rk_error_msg());
    eng_model_close(m);
    write_l2c(p, ok, n - 1);
    expect_reject(p, RK_ERR_TRUNCATED, "needs");
    write_l2c(p, ok, n + 3);
    expect_reject(p, RK_ERR_FORMAT, "more than its header");
    write_file(p, "abc", 3);
    expect_reject(p, RK_ERR_TRUNCATED, "header");
    int32_t neg[7] = {16, 32, -2, 4, 2, 20, 8};
    write_l2c(p, neg, n);
    expect_reject(p, RK_ERR_FORMAT, "non-positive");
    int32_t gqa[7] = {16, 32, 2, 4, 3, 20, 8};
    write_l2c(p, gqa, n);
    expect_reject(p, RK_ERR_FORMAT, "kv heads");
    int32_t nodiv[7] = {18, 32, 2, 4, 2, 20, 8};
    write_l2c(p, nodiv, n);
    expect_reject(p, RK_ERR_FORMAT, "multiple");
    int32_t huge[7] = {1 << 30, 1 << 30, 1 << 20, 1 << 10, 1 << 10, 1 << 30, 1 << 30};
    write_l2c(p, huge, 4);
    expect_reject(p, RK_ERR_UNSUPPORTED, "sizes");
    int32_t zero[7] = {0, 0, 0, 0, 0, 0, 0};
    write_l2c(p, zero, 4);
    expect_reject(p, RK_ERR_FORMAT, "non-positive");
    snprintf(p, sizeof(p), "%s/nonexistent.bin", tmp);
    expect_reject(p, RK_ERR_NOT_FOUND, "nonexistent");
}

Test(malformed, llama2c_truncated_real_model)
{
    const char *src = rk_test_model_path("stories260K.bin");
    if (!src)
        cr_skip_test("skipped: no real model (stories260K.bin)");
    size_t n;
    uint8_t *b = read_file(src, &n);
    char p[600];
    snprintf(p, sizeof(p), "%s/trunc.bin", tmp);
    const size_t cuts[] = {27, 28, 1000, n / 2, n - 4};
    for (size_t i = 0; i < sizeof(cuts) / sizeof(cuts[0]); i++) {
        write_file(p, b, cuts[i]);
        expect_reject(p, RK_ERR_TRUNCATED, "bytes");
    }
    free(b);
}

/* A valid synthetic HF folder in tmp/<name>; returns its path. */
static const char *hf_folder(const char *name, const char *shape)
{
    static char dir[700];
    snprintf(dir, sizeof(dir), "%s/%s", tmp, name);
    cr_assert_eq(eng_model_synth_write(shape, 5, dir), RK_OK, "%s", rk_error_msg());
    return dir;
}

/* Replace the first occurrence of `from` in dir/config.json with `to`. */
static void edit_config(const char *dir, const char *from, const char *to)
{
    char p[800];
    snprintf(p, sizeof(p), "%s/config.json", dir);
    size_t n;
    char *s = (char *)read_file(p, &n);
    s[n] = 0;
    char *at = strstr(s, from);
    cr_assert_not_null(at, "config.json lacks '%s'", from);
    size_t out_n = n - strlen(from) + strlen(to);
    char *o = malloc(out_n + 1);
    size_t pre = (size_t)(at - s);
    memcpy(o, s, pre);
    memcpy(o + pre, to, strlen(to));
    memcpy(o + pre + strlen(to), at + strlen(from), n - pre - strlen(from));
    write_file(p, o, out_n);
    free(s);
    free(o);
}

Test(malformed, hf_config_errors)
{
    const char *d = hf_folder("a", "test-llama");
    eng_model *m;
    cr_assert_eq(eng_model_open(d, &m), RK_OK, "%s", rk_error_msg());
    eng_model_close(m);
    char files[2][800];
    snprintf(files[0], sizeof(files[0]), "%s/config.json", d);
    snprintf(files[1], sizeof(files[1]), "%s/model.safetensors", d);
    for (int i = 0; i < 2; i++) {
        cr_expect_eq(eng_model_open(files[i], &m), RK_OK, "a file of the folder names the folder: %s", rk_error_msg());
        eng_model_close(m);
    }
    edit_config(d, "\"tie_word_embeddings\": false,", "\"tie_word_embeddings\": false,,");
    expect_reject(d, RK_ERR_FORMAT, "config.json");
    d = hf_folder("b", "test-llama");
    edit_config(d, "\"hidden_size\"", "\"hidden_sighs\"");
    expect_reject(d, RK_ERR_FORMAT, "hidden_size");
    d = hf_folder("c", "test-llama");
    edit_config(d, "LlamaForCausalLM", "GPT2LMHeadModel");
    expect_reject(d, RK_ERR_UNSUPPORTED, "GPT2LMHeadModel");
    d = hf_folder("d", "test-llama3");
    edit_config(d, "\"llama3\"", "\"yarn\"");
    expect_reject(d, RK_ERR_UNSUPPORTED, "yarn");
    d = hf_folder("e", "test-llama");
    edit_config(d, "\"num_hidden_layers\": 2", "\"num_hidden_layers\": -2");
    expect_reject(d, RK_ERR_FORMAT, "num_hidden_layers");
    d = hf_folder("f", "test-llama");
    edit_config(d, "\"silu\"", "\"gelu\"");
    expect_reject(d, RK_ERR_UNSUPPORTED, "gelu");
    d = hf_folder("g", "test-llama");
    edit_config(d, "\"eos_token_id\": [2]", "\"eos_token_id\": [2, 99999]");
    expect_reject(d, RK_ERR_FORMAT, "eos_token_id");
}

Test(malformed, hf_wrong_shapes_and_missing_tensors)
{
    const char *d = hf_folder("a", "test-llama");
    edit_config(d, "\"intermediate_size\": 96", "\"intermediate_size\": 97");
    expect_reject(d, RK_ERR_FORMAT, "mlp.gate_proj.weight has shape [96, 48]");
    d = hf_folder("b", "test-llama");
    edit_config(d, "\"num_hidden_layers\": 2", "\"num_hidden_layers\": 3");
    expect_reject(d, RK_ERR_FORMAT, "model.layers.2.input_layernorm.weight is missing");
    d = hf_folder("c", "test-llama3"); /* tied: no lm_head in the file */
    edit_config(d, "\"tie_word_embeddings\": true", "\"tie_word_embeddings\": false");
    expect_reject(d, RK_ERR_FORMAT, "lm_head.weight is missing");
    d = hf_folder("e", "test-llama");
    edit_config(d, "\"vocab_size\": 96", "\"vocab_size\": 95");
    expect_reject(d, RK_ERR_FORMAT, "embed_tokens");
    d = hf_folder("f", "test-qwen2"); /* qwen2 needs the biases */
    edit_config(d, "Qwen2ForCausalLM", "LlamaForCausalLM");
    eng_model *m;
    cr_expect_eq(eng_model_open(d, &m), RK_OK, "extra tensors are ignored: %s", rk_error_msg());
    eng_model_close(m);
    d = hf_folder("g", "test-llama");
    edit_config(d, "LlamaForCausalLM", "Qwen2ForCausalLM");
    expect_reject(d, RK_ERR_FORMAT, "q_proj.bias is missing");
    char p[800];
    snprintf(p, sizeof(p), "%s/a/config.json", tmp);
    remove(p);
    snprintf(p, sizeof(p), "%s/a", tmp);
    expect_reject(p, RK_ERR_NOT_FOUND, "config.json");
}

Test(malformed, hf_truncated_and_corrupt_safetensors)
{
    const char *d = hf_folder("a", "test-llama");
    char p[800];
    snprintf(p, sizeof(p), "%s/model.safetensors", d);
    size_t n;
    uint8_t *b = read_file(p, &n);
    uint64_t hl = rk_get_le64(b);
    /* cut inside the data, inside the header, inside the length */
    const size_t cuts[] = {n - 1, (size_t)(8 + hl + 100), (size_t)(8 + hl / 2), 5, 0};
    const rk_status want[] = {RK_ERR_TRUNCATED, RK_ERR_TRUNCATED, RK_ERR_TRUNCATED, RK_ERR_TRUNCATED,
                              RK_ERR_TRUNCATED};
    for (size_t i = 0; i < 5; i++) {
        write_file(p, b, cuts[i]);
        expect_reject(d, want[i], "");
    }
    /* header length overflow: 2^64-1 and just past the file */
    uint8_t *c = malloc(n);
    memcpy(c, b, n);
    rk_put_le64(c, UINT64_MAX);
    write_file(p, c, n);
    expect_reject(d, RK_ERR_FORMAT, "header length");
    rk_put_le64(c, (uint64_t)n - 7);
    write_file(p, c, n);
    expect_reject(d, RK_ERR_TRUNCATED, "header of");
    /* garbage in the JSON header */
    memcpy(c, b, n);
    c[8 + hl / 2] = '\x01';
    write_file(p, c, n);
    expect_reject(d, RK_ERR_FORMAT, "JSON");
    free(c);
    free(b);
}

/* Parse a header given as JSON text followed by data_len zero bytes. */
static rk_status parse_hdr(const char *json, size_t data_len, eng_st_header **h)
{
    size_t jl = strlen(json), n = 8 + jl + data_len;
    uint8_t *b = calloc(1, n);
    rk_put_le64(b, jl);
    memcpy(b + 8, json, jl);
    rk_status st = eng_st_parse(b, n, h);
    free(b);
    return st;
}

Test(malformed, safetensors_header_rules)
{
    eng_st_header *h;
    cr_assert_eq(parse_hdr("{\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
                           "\"b\":{\"dtype\":\"BF16\",\"shape\":[],\"data_offsets\":[24,26]},"
                           "\"__metadata__\":{\"format\":\"pt\"}}  ",
                           26, &h),
                 RK_OK, "%s", rk_error_msg());
    cr_expect_eq(h->n, 2);
    const eng_st_tensor *a = eng_st_find(h, "a");
    cr_assert_not_null(a);
    cr_expect_eq(a->ndim, 2);
    cr_expect_eq(a->n_elems, 6);
    cr_expect_eq(eng_st_find(h, "b")->n_elems, 1);
    cr_expect_null(eng_st_find(h, "c"));
    eng_st_free(h);
    struct {
        const char *json;
        size_t data;
        rk_status want;
        const char *needle;
    } bad[] = {
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,20]}}", 24, RK_ERR_FORMAT, "do not match"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]}}", 23, RK_ERR_TRUNCATED, "ends at"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[2,6]}}", 8, RK_ERR_FORMAT, "overlap"},
        {"{\"a\":{\"dtype\":\"Q4\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1, RK_ERR_FORMAT, "dtype"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4, RK_ERR_FORMAT, "shape"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 4, RK_ERR_FORMAT, "dims"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,16],\"data_offsets\":[0,4]}}", 4, RK_ERR_FORMAT,
         "overflow"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,4]}}", 8, RK_ERR_FORMAT, "do not match"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", 8, RK_ERR_FORMAT, "data_offsets"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"x\":1}}", 4, RK_ERR_FORMAT, "unknown field"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
         "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, RK_ERR_FORMAT, "duplicate"},
        {"{\"a\":[1,2]}", 0, RK_ERR_FORMAT, "not an object"},
        {"{\"__metadata__\":{\"k\":1}}", 0, RK_ERR_FORMAT, "__metadata__"},
        {"[1]", 0, RK_ERR_FORMAT, "JSON object"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}", 4, RK_ERR_FORMAT, "JSON"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        h = (eng_st_header *)1;
        rk_status st = parse_hdr(bad[i].json, bad[i].data, &h);
        cr_expect_eq(st, bad[i].want, "case %zu: got %s (%s)", i, rk_status_name(st), rk_error_msg());
        cr_expect_null(h, "case %zu", i);
        cr_expect(strstr(rk_error_msg(), bad[i].needle) != NULL, "case %zu: '%s' lacks '%s'", i, rk_error_msg(),
                  bad[i].needle);
    }
    uint8_t tiny[8] = {0};
    cr_expect_eq(eng_st_parse(tiny, 7, &h), RK_ERR_TRUNCATED);
    cr_expect_eq(eng_st_parse(tiny, 8, &h), RK_ERR_FORMAT, "empty header");
}

Test(malformed, unsupported_dtype_in_model)
{
    const char *d = hf_folder("a", "test-llama");
    /* rewrite the file with model.norm.weight declared I32 (same byte size) */
    char p[800];
    snprintf(p, sizeof(p), "%s/model.safetensors", d);
    size_t n;
    uint8_t *b = read_file(p, &n);
    uint64_t hl = rk_get_le64(b);
    char *hdr = (char *)b + 8;
    char *at = memmem(hdr, hl, "\"model.norm.weight\":{\"dtype\":\"F32\"", 34);
    cr_assert_not_null(at);
    memcpy(at + 30, "I32", 3);
    write_file(p, b, n);
    expect_reject(d, RK_ERR_UNSUPPORTED, "I32");
    free(b);
}

Test(malformed, sharded_folder_loads_and_bad_index_rejected)
{
    const char *src = hf_folder("one", "test-mistral");
    char p[800], dir[700];
    snprintf(p, sizeof(p), "%s/model.safetensors", src);
    size_t n;
    uint8_t *b = read_file(p, &n);
    eng_st_header *h;
    cr_assert_eq(eng_st_parse(b, n, &h), RK_OK);
    snprintf(dir, sizeof(dir), "%s/sharded", tmp);
    mkdir(dir, 0755);
    /* first half of the tensors in shard 1, the rest in shard 2, plus an index */
    char idx[65536];
    size_t il = (size_t)snprintf(idx, sizeof(idx), "{\"metadata\":{},\"weight_map\":{");
    for (int s = 0; s < 2; s++) {
        eng_st_writer w;
        snprintf(p, sizeof(p), "%s/model-0000%d-of-00002.safetensors", dir, s + 1);
        cr_assert_eq(eng_st_writer_open(&w, p), RK_OK);
        size_t lo = s == 0 ? 0 : h->n / 2, hi = s == 0 ? h->n / 2 : h->n;
        for (size_t i = lo; i < hi; i++) {
            uint64_t shape[8];
            for (int k = 0; k < h->t[i].ndim; k++)
                shape[k] = h->t[i].shape[k];
            cr_assert_eq(eng_st_writer_add(&w, h->t[i].name, h->t[i].dtype, h->t[i].ndim, shape), RK_OK);
            il += (size_t)snprintf(idx + il, sizeof(idx) - il, "%s\"%s\":\"model-0000%d-of-00002.safetensors\"",
                                   il > 30 ? "," : "", h->t[i].name, s + 1);
        }
        cr_assert_eq(eng_st_writer_begin_data(&w, NULL, NULL), RK_OK);
        for (size_t i = lo; i < hi; i++)
            cr_assert_eq(eng_st_writer_data(&w, b + h->data_off + h->t[i].begin, h->t[i].end - h->t[i].begin), RK_OK);
        cr_assert_eq(eng_st_writer_close(&w), RK_OK);
    }
    il += (size_t)snprintf(idx + il, sizeof(idx) - il, "}}");
    snprintf(p, sizeof(p), "%s/model.safetensors.index.json", dir);
    write_file(p, idx, il);
    char cfg_src[800], cfg_dst[800];
    snprintf(cfg_src, sizeof(cfg_src), "%s/config.json", src);
    snprintf(cfg_dst, sizeof(cfg_dst), "%s/config.json", dir);
    size_t cl;
    uint8_t *cfg = read_file(cfg_src, &cl);
    write_file(cfg_dst, cfg, cl);
    free(cfg);
    eng_model *a, *s;
    cr_assert_eq(eng_model_open(src, &a), RK_OK);
    cr_assert_eq(eng_model_open(dir, &s), RK_OK, "%s", rk_error_msg());
    eng_backend *ba, *bs;
    eng_seq *qa, *qs;
    cr_assert_eq(eng_backend_cpu_new(a, 1, &ba), RK_OK);
    cr_assert_eq(eng_backend_cpu_new(s, 1, &bs), RK_OK);
    cr_assert_eq(eng_seq_new(ba, 0, &qa), RK_OK);
    cr_assert_eq(eng_seq_new(bs, 0, &qs), RK_OK);
    int32_t tok[4] = {1, 9, 8, 7};
    size_t V = (size_t)eng_model_get_info(a)->vocab;
    float *la = malloc(V * 4), *ls = malloc(V * 4);
    cr_assert_eq(eng_prefill(qa, tok, 4, NULL, ENG_LOGITS_LAST, la), RK_OK);
    cr_assert_eq(eng_prefill(qs, tok, 4, NULL, ENG_LOGITS_LAST, ls), RK_OK);
    cr_expect(memcmp(la, ls, V * 4) == 0, "sharded model computes differently");
    free(la);
    free(ls);
    eng_seq_free(qa);
    eng_seq_free(qs);
    eng_backend_free(ba);
    eng_backend_free(bs);
    eng_model_close(a);
    eng_model_close(s);
    /* index naming a missing shard, and one escaping the folder */
    write_file(p, "{\"weight_map\":{\"x\":\"nope.safetensors\"}}", strlen("{\"weight_map\":{\"x\":\"nope.safetensors\"}}"));
    expect_reject(dir, RK_ERR_NOT_FOUND, "nope.safetensors");
    write_file(p, "{\"weight_map\":{\"x\":\"../x.safetensors\"}}", strlen("{\"weight_map\":{\"x\":\"../x.safetensors\"}}"));
    expect_reject(dir, RK_ERR_FORMAT, "shard file name");
    write_file(p, "{\"weight_map\":[]}", strlen("{\"weight_map\":[]}"));
    expect_reject(dir, RK_ERR_FORMAT, "weight_map");
    eng_st_free(h);
    free(b);
}

Test(malformed, tokenizer_files)
{
    const char *tp = rk_test_model_path("tok512.bin");
    if (!tp)
        cr_skip_test("skipped: no real model (tok512.bin)");
    size_t n;
    uint8_t *b = read_file(tp, &n);
    eng_tokenizer *t;
    cr_assert_eq(eng_tokenizer_from_bytes(b, n, 512, &t), RK_OK);
    eng_tokenizer_free(t);
    cr_expect_eq(eng_tokenizer_from_bytes(b, n - 1, 512, &t), RK_ERR_TRUNCATED);
    cr_expect_null(t);
    cr_expect_eq(eng_tokenizer_from_bytes(b, 3, 512, &t), RK_ERR_TRUNCATED);
    cr_expect_eq(eng_tokenizer_from_bytes(b, n, 513, &t), RK_ERR_TRUNCATED, "more pieces than the file has");
    uint8_t *c = malloc(n);
    memcpy(c, b, n);
    rk_put_le32(c + 8, 0x7fffffff); /* first piece's length */
    cr_expect_eq(eng_tokenizer_from_bytes(c, n, 512, &t), RK_ERR_FORMAT);
    char p[600];
    snprintf(p, sizeof(p), "%s/none.bin", tmp);
    cr_expect_eq(eng_tokenizer_open(p, 512, &t), RK_ERR_NOT_FOUND);
    free(c);
    free(b);
}
