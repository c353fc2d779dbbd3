/* cli.c — `ragkv generate` and `ragkv model info|convert|synth`. */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ragkv/alloc.h"
#include "ragkv/cli.h"
#include "ragkv/clock.h"
#include "ragkv/engine.h"
#include "ragkv/tokenizer.h"

static int fail_st(const char *what, rk_status st)
{
    fprintf(stderr, "ragkv: %s: %s (%s)\n", what, rk_strerror(st), rk_error_msg());
    return 1;
}

static bool parse_long(const char *s, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return false;
    *out = v;
    return true;
}

static bool parse_float(const char *s, float lo, float hi, float *out)
{
    char *end;
    errno = 0;
    float v = strtof(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= hi))
        return false;
    *out = v;
    return true;
}

/* Read decimal token ids, one per line (blank lines ignored). */
static int read_tokens(const char *path, int32_t **out, size_t *n)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "ragkv generate: cannot open %s\n", path);
        return 1;
    }
    size_t cap = 64, k = 0;
    int32_t *t = rk_malloc(cap * sizeof(int32_t));
    char line[128];
    int lineno = 0;
    while (t && fgets(line, sizeof(line), f)) {
        lineno++;
        char *p = line;
        while (isspace((unsigned char)*p))
            p++;
        if (!*p)
            continue;
        char *e = p + strlen(p);
        while (e > p && isspace((unsigned char)e[-1]))
            *--e = 0;
        long v;
        if (!parse_long(p, 0, INT32_MAX, &v)) {
            fprintf(stderr, "ragkv generate: %s line %d: not a token id: '%s'\n", path, lineno, p);
            fclose(f);
            rk_free(t);
            return 2;
        }
        if (k == cap) {
            int32_t *nt = rk_realloc(t, 2 * cap * sizeof(int32_t));
            if (!nt) {
                rk_free(t);
                t = NULL;
                break;
            }
            t = nt;
            cap *= 2;
        }
        t[k++] = (int32_t)v;
    }
    fclose(f);
    if (!t) {
        fprintf(stderr, "ragkv generate: out of memory\n");
        return 1;
    }
    *out = t;
    *n = k;
    return 0;
}

/* Print a piece as llama2.c does: skip lone unprintable bytes. */
static void print_piece(const char *p, size_t len)
{
    if (!p || len == 0)
        return;
    if (len == 1 && !(isprint((unsigned char)p[0]) || isspace((unsigned char)p[0])))
        return;
    fwrite(p, 1, len, stdout);
}

static void generate_usage(FILE *f)
{
    fprintf(f, "usage: ragkv generate --model PATH [--tokenizer PATH] (--prompt TEXT | --tokens-in FILE)\n"
               "         --steps N [--temperature T] [--top-p P] [--top-k K] [--seed S]\n"
               "         [--backend cpu|cuda] [--threads N] [--tokens-out FILE] [--logits-out FILE]\n"
               "  --steps counts positions processed, prompt (with BOS) included, as llama2.c's -n\n"
               "  (0 or more than the model's context: the context).\n"
               "  Stops early at BOS (llama2.c models) or the config's EOS (Hugging Face models).\n"
               "  --tokens-in/--tokens-out: decimal token ids, one per line (tokens-out: every\n"
               "  position, prompt with BOS first). --logits-out: little-endian float32 rows of vocab\n"
               "  size, one per sampled token (from the last prompt position on).\n");
}

int eng_cli_generate(int argc, char **argv)
{
    return eng_cli_generate_with(argc, argv, NULL, NULL);
}

int eng_cli_generate_with(int argc, char **argv, eng_prompt_fn fn, void *fn_ctx)
{
    const char *model_path = NULL, *tok_path = NULL, *prompt = NULL, *tokens_in = NULL, *tokens_out = NULL,
               *logits_out = NULL, *backend = "cpu";
    long steps = -1, seed = 0, threads = 0, top_k = 0;
    float temp = 0.0f, top_p = 1.0f;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            generate_usage(stdout);
            return 0;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "ragkv generate: %s needs a value (or is unknown)\n\n", a);
            generate_usage(stderr);
            return 2;
        }
        const char *v = argv[++i];
        bool ok = true;
        if (!strcmp(a, "--model"))
            model_path = v;
        else if (!strcmp(a, "--tokenizer"))
            tok_path = v;
        else if (!strcmp(a, "--prompt"))
            prompt = v;
        else if (!strcmp(a, "--tokens-in"))
            tokens_in = v;
        else if (!strcmp(a, "--tokens-out"))
            tokens_out = v;
        else if (!strcmp(a, "--logits-out"))
            logits_out = v;
        else if (!strcmp(a, "--backend"))
            backend = v;
        else if (!strcmp(a, "--steps"))
            ok = parse_long(v, 0, INT32_MAX, &steps); /* 0: the model's context, as llama2.c */
        else if (!strcmp(a, "--seed"))
            ok = parse_long(v, 0, LONG_MAX, &seed);
        else if (!strcmp(a, "--threads"))
            ok = parse_long(v, 0, 4096, &threads);
        else if (!strcmp(a, "--top-k"))
            ok = parse_long(v, 0, INT32_MAX, &top_k);
        else if (!strcmp(a, "--temperature"))
            ok = parse_float(v, 0.0f, 100.0f, &temp);
        else if (!strcmp(a, "--top-p"))
            ok = parse_float(v, 0.0f, 1.0f, &top_p);
        else {
            fprintf(stderr, "ragkv generate: unknown option %s\n\n", a);
            generate_usage(stderr);
            return 2;
        }
        if (!ok) {
            fprintf(stderr, "ragkv generate: bad value '%s' for %s\n", v, a);
            return 2;
        }
    }
    if (!model_path || steps < 0 || (!prompt == !tokens_in)) {
        fprintf(stderr, "ragkv generate: --model, --steps and one of --prompt/--tokens-in are required\n\n");
        generate_usage(stderr);
        return 2;
    }

    int rc = 1;
    rk_status st;
    eng_model *m = NULL;
    eng_backend *be = NULL;
    eng_seq *s = NULL;
    eng_tokenizer *tk = NULL;
    int32_t *toks = NULL;
    float *logits = NULL;
    FILE *lf = NULL, *tf = NULL;
    eng_sampler sm;
    eng_sampler_init(&sm, temp, (int)top_k, top_p, (uint64_t)seed);

    if ((st = eng_model_open(model_path, &m)) != RK_OK) {
        rc = fail_st(model_path, st);
        goto out;
    }
    const eng_model_info *mi = eng_model_get_info(m);
    char tkbuf[1400];
    if (!tok_path) {
        struct stat sb;
        if (stat(model_path, &sb) == 0 && S_ISDIR(sb.st_mode)) {
            snprintf(tkbuf, sizeof(tkbuf), "%s/tokenizer.bin", model_path);
            if (access(tkbuf, R_OK) == 0)
                tok_path = tkbuf;
        }
    }
    if (tok_path && (st = eng_tokenizer_open(tok_path, mi->vocab, &tk)) != RK_OK) {
        rc = fail_st(tok_path, st);
        goto out;
    }
    size_t n_prompt = 0;
    if (prompt) {
        if (!tk) {
            fprintf(stderr, "ragkv generate: --prompt needs a tokenizer (--tokenizer PATH)\n");
            rc = 2;
            goto out;
        }
        size_t cap = strlen(prompt) + 3;
        toks = rk_malloc(cap * sizeof(int32_t));
        if (!toks || (st = eng_tokenizer_encode(tk, prompt, true, toks, cap, &n_prompt)) != RK_OK) {
            rc = fail_st("encoding the prompt", toks ? st : RK_ERR_NOMEM);
            goto out;
        }
    } else if ((rc = read_tokens(tokens_in, &toks, &n_prompt)) != 0) {
        goto out;
    }
    rc = 1;
    if (n_prompt == 0) {
        fprintf(stderr, "ragkv generate: the prompt has no tokens\n");
        rc = 2;
        goto out;
    }
    if (steps == 0 || steps > mi->max_seq)
        steps = mi->max_seq;
    size_t total = (size_t)steps + 1; /* tokens at positions 0..steps */
    if (total < n_prompt)
        total = n_prompt;
    int32_t *all = rk_realloc(toks, total * sizeof(int32_t));
    logits = rk_malloc((size_t)mi->vocab * sizeof(float));
    if (!all || !logits) {
        if (all)
            toks = all;
        rc = fail_st("generate", rk_error_set(RK_ERR_NOMEM, "out of memory"));
        goto out;
    }
    toks = all;
    if ((st = eng_backend_new(m, backend, (int)threads, &be)) != RK_OK) {
        rc = fail_st("backend", st);
        goto out;
    }
    if ((st = eng_seq_new(be, (size_t)steps, &s)) != RK_OK) {
        rc = fail_st("sequence", st);
        goto out;
    }
    if (logits_out && !(lf = fopen(logits_out, "wb"))) {
        fprintf(stderr, "ragkv generate: cannot create %s\n", logits_out);
        goto out;
    }
    uint64_t t0 = rk_now_ns();
    /* the prompt: positions 0..n_pre-1 in one prefill */
    size_t n_pre = n_prompt < (size_t)steps ? n_prompt : (size_t)steps;
    bool want = n_prompt <= (size_t)steps; /* the last prompt position's logits choose a token */
    if (fn && !want) {
        fprintf(stderr, "ragkv generate: --steps must cover the whole assembled prompt\n");
        rc = 2;
        goto out;
    }
    st = fn ? fn(fn_ctx, m, be, s, toks, n_pre, logits)
            : eng_prefill(s, toks, n_pre, NULL, want ? ENG_LOGITS_LAST : ENG_LOGITS_NONE, logits);
    if (st != RK_OK) {
        rc = fail_st("prefill", st);
        goto out;
    }
    for (size_t i = 0; i < n_pre; i++) {
        size_t len = 0;
        if (tk && i > 0) {
            const char *piece = eng_tokenizer_decode(tk, toks[i - 1], toks[i], &len);
            print_piece(piece, len);
        }
    }
    fflush(stdout);
    size_t n_tok = n_pre, n_gen = 0;
    uint64_t t1 = rk_now_ns();
    /* the first token from the prompt's logits, the others chosen by eng_decode_sample with
     * each step (on the device where the backend can: the logits cross over only for
     * --logits-out) */
    int32_t next = -1;
    bool chosen = false; /* next already chosen by the last decode step */
    eng_sampler *smp = &sm;
    while (want) {
        if (lf && fwrite(logits, sizeof(float), (size_t)mi->vocab, lf) != (size_t)mi->vocab) {
            fprintf(stderr, "ragkv generate: cannot write %s\n", logits_out);
            goto out;
        }
        if (!chosen)
            next = eng_sample(&sm, logits, mi->vocab);
        if (next < 0) {
            fprintf(stderr, "ragkv generate: sampling failed (NaN logits or out of memory)\n");
            goto out;
        }
        bool stop = false;
        for (int i = 0; i < mi->n_stop; i++)
            stop |= next == mi->stop[i];
        if (stop)
            break;
        toks[n_tok++] = next;
        n_gen++;
        if (tk) {
            size_t len = 0;
            const char *piece = eng_tokenizer_decode(tk, toks[n_tok - 2], next, &len);
            print_piece(piece, len);
        } else {
            printf("%d\n", next);
        }
        fflush(stdout);
        if (eng_seq_len(s) >= (size_t)steps) /* every position processed */
            break;
        int32_t fed = next;
        if ((st = eng_decode_sample(be, &s, &fed, 1, &smp, &next, lf ? logits : NULL)) != RK_OK) {
            rc = fail_st("decode", st);
            goto out;
        }
        chosen = true;
    }
    printf("\n");
    fflush(stdout);
    uint64_t t2 = rk_now_ns();
    if (tokens_out) {
        if (!(tf = fopen(tokens_out, "w"))) {
            fprintf(stderr, "ragkv generate: cannot create %s\n", tokens_out);
            goto out;
        }
        for (size_t i = 0; i < n_tok; i++)
            fprintf(tf, "%d\n", toks[i]);
        if (fclose(tf) != 0) {
            tf = NULL;
            fprintf(stderr, "ragkv generate: cannot write %s\n", tokens_out);
            goto out;
        }
        tf = NULL;
    }
    double pre_s = (double)(t1 - t0) / 1e9, gen_s = (double)(t2 - t1) / 1e9;
    fprintf(stderr, "ragkv generate: %s backend, prompt %zu tokens in %.3f s (%.1f tok/s), generated %zu in %.3f s "
                    "(%.1f tok/s)\n", eng_backend_name(be), n_pre, pre_s, pre_s > 0 ? (double)n_pre / pre_s : 0.0,
            n_gen, gen_s, gen_s > 0 ? (double)n_gen / gen_s : 0.0);
    rc = 0;
out:
    if (lf && fclose(lf) != 0 && rc == 0) {
        fprintf(stderr, "ragkv generate: cannot write %s\n", logits_out);
        rc = 1;
    }
    if (tf)
        fclose(tf);
    eng_sampler_free(&sm);
    rk_free(logits);
    rk_free(toks);
    eng_seq_free(s);
    eng_backend_free(be);
    eng_tokenizer_free(tk);
    eng_model_close(m);
    return rc;
}

/* ---- ragkv model ------------------------------------------------------------------------- */

static void model_usage(FILE *f)
{
    fprintf(f, "usage: ragkv model info PATH\n"
               "       ragkv model convert IN.bin OUTDIR [--tokenizer TOKENIZER.bin]\n"
               "       ragkv model synth --shape NAME --seed S --out DIR\n"
               "       ragkv model synth --list\n"
               "  info: what a model is (llama2.c .bin or Hugging Face folder).\n"
               "  convert: a llama2.c checkpoint as a Hugging Face folder (config.json +\n"
               "    model.safetensors, q/k permuted for rotate-half RoPE), tokenizer copied in.\n"
               "  synth: seeded random weights of a real shape as a Hugging Face folder.\n");
}

static const char *format_name(eng_format f)
{
    return f == ENG_FORMAT_LLAMA2C ? "llama2.c" : f == ENG_FORMAT_HF ? "huggingface" : "synthetic";
}

static void print_info(const eng_model_info *mi, const char *path)
{
    printf("path:        %s\n", path);
    printf("id:          %s\n", mi->id);
    printf("format:      %s\n", format_name(mi->format));
    printf("arch:        %s\n", mi->arch);
    printf("dtype:       %s\n", eng_dtype_name(mi->dtype));
    printf("params:      %llu\n", (unsigned long long)mi->n_params);
    printf("dim:         %d\n", mi->dim);
    printf("hidden:      %d\n", mi->hidden);
    printf("layers:      %d\n", mi->n_layers);
    printf("heads:       %d\n", mi->n_heads);
    printf("kv_heads:    %d\n", mi->n_kv_heads);
    printf("head_dim:    %d\n", mi->head_dim);
    printf("vocab:       %d\n", mi->vocab);
    printf("max_seq:     %d\n", mi->max_seq);
    printf("rope:        %s, theta %g%s\n", mi->rope == ENG_ROPE_INTERLEAVED ? "interleaved" : "rotate-half",
           (double)mi->rope_theta, mi->rope_llama3 ? ", llama3 scaling" : "");
    if (mi->rope_llama3)
        printf("rope_scale:  factor %g, low %g, high %g, original %d\n", (double)mi->rope_factor,
               (double)mi->rope_low_freq, (double)mi->rope_high_freq, mi->rope_orig_max);
    printf("norm_eps:    %g\n", (double)mi->norm_eps);
    printf("qkv_bias:    %s\n", mi->qkv_bias ? "yes" : "no");
    printf("tied:        %s\n", mi->tied_embeddings ? "yes" : "no");
    printf("bos:         %d\n", mi->bos);
    printf("eos:         %d\n", mi->eos);
    printf("stop:       ");
    for (int i = 0; i < mi->n_stop; i++)
        printf(" %d", mi->stop[i]);
    printf("\n");
}

static int copy_file(const char *from, const char *to)
{
    FILE *in = fopen(from, "rb");
    if (!in) {
        fprintf(stderr, "ragkv model convert: cannot open %s\n", from);
        return 1;
    }
    FILE *out = fopen(to, "wb");
    if (!out) {
        fclose(in);
        fprintf(stderr, "ragkv model convert: cannot create %s\n", to);
        return 1;
    }
    char buf[65536];
    size_t n;
    bool ok = true;
    while ((n = fread(buf, 1, sizeof(buf), in)) > 0)
        ok &= fwrite(buf, 1, n, out) == n;
    ok &= !ferror(in);
    fclose(in);
    ok &= fclose(out) == 0;
    if (!ok)
        fprintf(stderr, "ragkv model convert: cannot copy %s to %s\n", from, to);
    return ok ? 0 : 1;
}

int eng_cli_model(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        model_usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const char *cmd = argv[1];
    rk_status st;
    if (!strcmp(cmd, "info")) {
        if (argc != 3) {
            model_usage(stderr);
            return 2;
        }
        eng_model *m;
        if ((st = eng_model_open(argv[2], &m)) != RK_OK)
            return fail_st(argv[2], st);
        print_info(eng_model_get_info(m), argv[2]);
        eng_model_close(m);
        return 0;
    }
    if (!strcmp(cmd, "convert")) {
        const char *in = NULL, *outdir = NULL, *tok = NULL;
        for (int i = 2; i < argc; i++) {
            if (!strcmp(argv[i], "--tokenizer") && i + 1 < argc)
                tok = argv[++i];
            else if (argv[i][0] == '-') {
                model_usage(stderr);
                return 2;
            } else if (!in)
                in = argv[i];
            else if (!outdir)
                outdir = argv[i];
            else {
                model_usage(stderr);
                return 2;
            }
        }
        if (!in || !outdir) {
            model_usage(stderr);
            return 2;
        }
        eng_model *m;
        if ((st = eng_model_open(in, &m)) != RK_OK)
            return fail_st(in, st);
        st = eng_model_write_hf(m, outdir);
        eng_model_close(m);
        if (st != RK_OK)
            return fail_st(outdir, st);
        if (tok) {
            char dst[1400];
            snprintf(dst, sizeof(dst), "%s/tokenizer.bin", outdir);
            if (copy_file(tok, dst) != 0)
                return 1;
        }
        printf("wrote %s\n", outdir);
        return 0;
    }
    if (!strcmp(cmd, "synth")) {
        const char *shape = NULL, *outdir = NULL;
        long seed = 0;
        for (int i = 2; i < argc; i++) {
            if (!strcmp(argv[i], "--list")) {
                for (const char *const *n = eng_synth_shape_names(); *n; n++)
                    printf("%s\n", *n);
                return 0;
            }
            if (i + 1 >= argc) {
                model_usage(stderr);
                return 2;
            }
            if (!strcmp(argv[i], "--shape"))
                shape = argv[++i];
            else if (!strcmp(argv[i], "--out"))
                outdir = argv[++i];
            else if (!strcmp(argv[i], "--seed")) {
                if (!parse_long(argv[++i], 0, LONG_MAX, &seed)) {
                    fprintf(stderr, "ragkv model synth: bad seed '%s'\n", argv[i]);
                    return 2;
                }
            } else {
                model_usage(stderr);
                return 2;
            }
        }
        if (!shape || !outdir) {
            model_usage(stderr);
            return 2;
        }
        if ((st = eng_model_synth_write(shape, (uint64_t)seed, outdir)) != RK_OK) {
            if (st == RK_ERR_NOT_FOUND) {
                fprintf(stderr, "ragkv model synth: unknown shape '%s'; shapes:", shape);
                for (const char *const *n = eng_synth_shape_names(); *n; n++)
                    fprintf(stderr, " %s", *n);
                fprintf(stderr, "\n");
                return 2;
            }
            return fail_st(outdir, st);
        }
        printf("wrote %s (shape %s, seed %ld)\n", outdir, shape, seed);
        return 0;
    }
    fprintf(stderr, "ragkv model: unknown command '%s'\n\n", cmd);
    model_usage(stderr);
    return 2;
}
