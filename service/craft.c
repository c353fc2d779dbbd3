/* craft.c — Cache-Craft variants captured inside served prompts: keys, lookup, use, capture
 * (see craft.h). */
#define RK_LOG_COMPONENT "craft"
#include "craft.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "ragkv/alloc.h"
#include "ragkv/clock.h"
#include "ragkv/log.h"
#include "ragkv/service.h"

#define CRAFT_MARK "|craft-after:"

enum { SKIP_QUOTA, SKIP_DENIED, SKIP_CORRUPT, SKIP_LIMIT, SKIP_BUSY, SKIP_ERROR, SKIP_RARE, NSKIP };

static struct {
    svc_metric *found, *used, *captured, *captures, *skipped[NSKIP];
} cm;

static void craft_metrics(void)
{
    static const char *const why[NSKIP] = {"quota", "denied", "corrupt", "limit", "busy", "error", "rare"};
    cm.found = svc_metric_get(SVC_COUNTER, "craft_variants_found_total", "",
                              "Cache-Craft variants found for a cachecraft prompt's chunk after its predecessor");
    cm.used = svc_metric_get(SVC_COUNTER, "craft_variants_used_total", "",
                             "of those, used: a lower recompute budget (CFO) than the chunk's standalone cache");
    cm.captured = svc_metric_get(SVC_COUNTER, "craft_variants_captured_total", "",
                                 "Cache-Craft variants captured inside prompts and stored");
    cm.captures = svc_metric_get(SVC_COUNTER, "craft_captures_total", "",
                                 "Cache-Craft capture jobs finished (one per prompt, whatever the outcome)");
    for (int i = 0; i < NSKIP; i++) {
        char lbl[32];
        snprintf(lbl, sizeof(lbl), "reason=\"%s\"", why[i]);
        cm.skipped[i] = svc_metric_get(SVC_COUNTER, "craft_variants_skipped_total", lbl,
                                       "Cache-Craft variants not used or not captured: quota, namespace not writable, "
                                       "corrupt or mismatched, beyond craft-capture-max-tokens, capture queue full, "
                                       "other errors, pair not yet seen craft-capture-min-uses times");
    }
}

void svc_craft_metrics_init(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, craft_metrics);
}

rk_status svc_craft_model(const char *model_id, const cc_key *prev, char *out)
{
    char hex[CC_KEY_HEX_LEN + 1];
    int len = snprintf(out, CC_NAME_MAX + 1, "%s" CRAFT_MARK "%s", model_id, cc_key_to_hex(prev, hex));
    if (len < 0 || len > CC_NAME_MAX)
        return rk_error_set(RK_ERR_LIMIT, "model id too long for Cache-Craft variant keys");
    return RK_OK;
}

rk_status svc_craft_key(const char *model_id, const char *ns, const cc_key *prev, const int32_t *tokens, uint32_t n,
                        cc_key *out)
{
    char model[CC_NAME_MAX + 1];
    rk_status st = svc_craft_model(model_id, prev, model);
    return st == RK_OK ? cc_key_compute(model, ns, tokens, n, out) : st;
}

void svc_craft_lookup(cc_store *store, const char *model_id, svc_gen *g, size_t i, const int32_t *tokens, uint32_t n)
{
    if (i == 0 || i >= g->nsegs || !tokens || !n)
        return;
    if (!g->vars && !(g->vars = rk_calloc(g->nsegs, sizeof(svc_gen_var))))
        return; /* no memory: no variant */
    svc_gen_var *v = &g->vars[i];
    if (v->asked)
        return;
    const char *ns = g->ns[0] ? g->ns : g->tenant;
    cc_record_init(&v->rec);
    if (svc_craft_key(model_id, ns, &g->segs[i - 1].key, tokens, n, &v->key) != RK_OK)
        return;
    v->asked = true;
    v->st = cc_store_get(store, g->tenant, &v->key, &v->blob, &v->rec);
    if (v->st == RK_OK)
        svc_metric_add(cm.found, 1);
}

void svc_gen_vars_free(svc_gen *g)
{
    for (size_t i = 0; g->vars && i < g->nsegs; i++) {
        cc_record_clear(&g->vars[i].rec);
        cc_buf_release(g->vars[i].blob);
    }
    rk_free(g->vars);
    g->vars = NULL;
}

/* Free n variants' KV floats and metadata and the two arrays (either may be NULL). */
static void kv_meta_free(float **kv, bl_craft_meta *md, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (kv)
            rk_free(kv[i]);
        if (md)
            bl_craft_meta_clear(&md[i]);
    }
    rk_free(kv);
    rk_free(md);
}

void svc_craft_use_clear(svc_craft_use *u)
{
    if (!u)
        return;
    kv_meta_free(u->kv, u->meta, u->nseg);
    rk_free(u->var);
    rk_free(u->need);
    memset(u, 0, sizeof(*u));
}

/* Segment i's variant opened: its KV floats and parsed metadata matching segs[i]. False
 * (counted corrupt) when any check fails. */
static bool open_variant(const svc_chunk_ctx *x, svc_gen_var *v, const bl_segment *seg, float **kv, bl_craft_meta *md)
{
    const eng_model_info *mi = eng_model_get_info(x->model);
    int32_t *t = NULL;
    uint32_t n = 0;
    rk_status st = svc_chunk_open(x, &v->key, &v->rec, v->blob, &t, &n, kv, NULL, NULL);
    if (st == RK_OK && (n != seg->n || memcmp(t, seg->tokens, (size_t)n * sizeof(int32_t)) != 0))
        st = rk_error_set(RK_ERR_CORRUPT, "variant of other tokens");
    if (st == RK_OK && (st = bl_craft_decode(v->rec.craft, v->rec.craft_len, md)) == RK_OK &&
        (md->n_tokens != seg->n || md->n_layers != (uint32_t)mi->n_layers))
        st = rk_error_set(RK_ERR_FORMAT, "variant metadata of %u tokens x %u layers for %zu x %d", md->n_tokens,
                          md->n_layers, seg->n, mi->n_layers);
    rk_free(t);
    if (st != RK_OK) {
        RK_WARN("Cache-Craft variant not used (%s: %s)", rk_status_name(st), rk_error_msg());
        rk_free(*kv);
        *kv = NULL;
        bl_craft_meta_clear(md);
        svc_metric_add(cm.skipped[SKIP_CORRUPT], 1);
        return false;
    }
    return true;
}

void svc_craft_use_prepare(const svc_chunk_ctx *x, svc_gen *g, const bl_segment *segs, bl_craft_segment *craft,
                           const uint64_t *ids, float alpha, svc_craft_use *u)
{
    memset(u, 0, sizeof(*u));
    size_t n = g->nsegs;
    u->kv = rk_calloc(n ? n : 1, sizeof(float *));
    u->meta = rk_calloc(n ? n : 1, sizeof(bl_craft_meta));
    u->var = rk_calloc(n ? n : 1, sizeof(bl_variant));
    u->need = rk_calloc(n ? n : 1, 1);
    if (!u->kv || !u->meta || !u->var || !u->need) {
        svc_craft_use_clear(u); /* no memory: no variants, no capture */
        return;
    }
    u->nseg = n;
    /* the leading segments that came from the cache of the prompt's own namespace: a chunk
     * named by key may be another namespace's (the tenant's own, in a prompt on a shared
     * corpus), and its key binds its namespace, so it must be the key of its tokens in ns */
    const char *ns = g->ns[0] ? g->ns : g->tenant;
    const char *model_id = eng_model_get_info(x->model)->id;
    while (u->cached_prefix < n) {
        const size_t i = u->cached_prefix;
        cc_key own;
        if (!(segs[i].kv || segs[i].block || segs[i].container) || !g->segs[i].keyed ||
            cc_key_compute(model_id, ns, segs[i].tokens, (uint32_t)segs[i].n, &own) != RK_OK ||
            !cc_key_equal(&own, &g->segs[i].key))
            break;
        u->cached_prefix++;
    }
    for (size_t i = 1; i < n; i++) {
        if (!g->segs[i - 1].keyed || !g->segs[i].keyed)
            continue; /* no identity to key a variant by */
        svc_gen_var *v = g->vars ? &g->vars[i] : NULL;
        bool cached = segs[i].kv || segs[i].block || segs[i].container;
        if (!v || !v->asked || v->st == RK_ERR_NOT_FOUND) {
            u->need[i] = 1; /* none stored yet */
            continue;
        }
        if (v->st != RK_OK || !cached)
            continue; /* the store failing (capture would too), or nothing to compare with */
        if (!open_variant(x, v, &segs[i], &u->kv[i], &u->meta[i])) {
            u->need[i] = 2; /* stored but unusable: replaced by a fresh capture */
            continue;
        }
        /* bl_segment_pick_variant's choice between the standalone cache (first) and this one */
        double c_own = bl_variant_cfo(NULL, segs[i].n, ids, i, alpha);
        double c_var = bl_variant_cfo(&u->meta[i], segs[i].n, ids, i, alpha);
        if (c_var < c_own) {
            u->var[i] = (bl_variant){.kv = u->kv[i], .meta = &u->meta[i]};
            craft[i].variants = &u->var[i];
            craft[i].n_variants = 1;
            svc_metric_add(cm.used, 1);
        }
    }
}

struct svc_craft_job {
    char tenant[SVC_NAME_MAX]; /* who stores the variants (its own namespace) */
    size_t nseg;               /* segments prefilled: through the last one captured */
    int32_t **tokens;          /* (nseg) copies of the segments' tokens */
    uint32_t *n;               /* (nseg) their lengths */
    cc_key *keys;              /* (nseg) their keys (a variant is keyed by its predecessor's) */
    uint64_t *ids;             /* (nseg) the first 8 bytes of each key: Cache-Craft chunk ids */
    uint8_t *need;             /* (nseg) as svc_craft_use.need */
    float **kv;                /* (nseg) run: the captured variants' KV (floats), or NULL */
    bl_craft_meta *md;         /* (nseg) run: their metadata */
    rk_buf *cont;              /* (nseg) store: a variant's encoded KV */
    rk_buf *meta;              /* (nseg) store: its RKCF metadata */
    double ms;                 /* run: the prefill's time, its steps summed (the cost split over the chunks) */
    size_t prefill_tokens;     /* BOS + the segments prefilled */
    bl_capture *cap;           /* run: the prefill in progress (svc_craft_job_begin .. its last step) */
};

void svc_craft_job_free(svc_craft_job *j)
{
    if (!j)
        return;
    for (size_t i = 0; i < j->nseg; i++) {
        if (j->tokens)
            rk_free(j->tokens[i]);
        if (j->cont)
            rk_buf_free(&j->cont[i]);
        if (j->meta)
            rk_buf_free(&j->meta[i]);
    }
    rk_free(j->tokens);
    rk_free(j->n);
    rk_free(j->keys);
    rk_free(j->ids);
    rk_free(j->need);
    rk_free(j->cont);
    rk_free(j->meta);
    bl_capture_free(j->cap); /* (before the KV and metadata it borrows) */
    kv_meta_free(j->kv, j->md, j->nseg);
    rk_free(j);
}

#define SEEN_SLOTS 4096
struct svc_craft_seen {
    uint64_t tag[SEEN_SLOTS];
    uint32_t count[SEEN_SLOTS];
};

svc_craft_seen *svc_craft_seen_new(void) { return rk_calloc(1, sizeof(svc_craft_seen)); }
void svc_craft_seen_free(svc_craft_seen *s) { rk_free(s); }

uint32_t svc_craft_seen_add(svc_craft_seen *s, const cc_key *prev, const cc_key *key)
{
    uint64_t a, b;
    memcpy(&a, prev->b, sizeof(a));
    memcpy(&b, key->b, sizeof(b));
    uint64_t tag = (a ^ (b * 0x9e3779b97f4a7c15ull)) | 1u; /* keys are hashes: their bytes mix well; 0 is empty */
    size_t at = (size_t)((tag >> 17) % SEEN_SLOTS);
    if (s->tag[at] != tag) {
        s->tag[at] = tag;
        s->count[at] = 0;
    }
    if (s->count[at] < UINT32_MAX)
        s->count[at]++;
    return s->count[at];
}

/* Candidates of a job (segments it would capture). */
static int64_t job_candidates(const svc_craft_job *j)
{
    int64_t c = 0;
    for (size_t i = 0; i < j->nseg; i++)
        c += j->need[i] != 0;
    return c;
}

svc_craft_job *svc_craft_job_new(const svc_chunk_ctx *x, const svc_gen *g, const svc_craft_use *u)
{
    if (!x->craft_capture || !u->need)
        return NULL;
    /* a shared namespace keeps variants made of its own chunks only, stored by its owner */
    bool shared = g->ns[0] && strcmp(g->ns, g->tenant) != 0;
    size_t last = 0, want = 0, tokens = 1;
    int64_t limit = 0, denied = 0, rare = 0;
    uint8_t *take = rk_calloc(u->nseg, 1); /* the candidates kept (need[i] otherwise) */
    if (!take) {
        for (size_t i = 0; i < u->nseg; i++)
            svc_metric_add(cm.skipped[SKIP_ERROR], u->need[i] != 0);
        return NULL;
    }
    for (size_t i = 0; i < u->nseg; i++) {
        tokens += g->segs[i].n;
        if (!u->need[i])
            continue;
        if (shared && i >= u->cached_prefix) {
            denied++;
            continue;
        }
        if (tokens > x->craft_max_tokens) {
            limit++;
            continue;
        }
        /* a pair seen fewer than craft_min_uses times waits (a stored variant that could not be
           used, need 2, had its pair captured before: again at once) */
        if (u->need[i] == 1 && i > 0 && x->craft_min_uses > 1 &&
            (!x->craft_seen || svc_craft_seen_add(x->craft_seen, &g->segs[i - 1].key, &g->segs[i].key) <
                                   x->craft_min_uses)) {
            rare++;
            continue;
        }
        take[i] = u->need[i];
        want++;
        last = i + 1;
    }
    svc_metric_add(cm.skipped[SKIP_LIMIT], limit);
    svc_metric_add(cm.skipped[SKIP_DENIED], denied);
    svc_metric_add(cm.skipped[SKIP_RARE], rare);
    if (!want) {
        rk_free(take);
        return NULL;
    }
    svc_craft_job *j = rk_calloc(1, sizeof(*j));
    if (!j)
        goto nomem;
    snprintf(j->tenant, sizeof(j->tenant), "%s", shared ? g->ns : g->tenant);
    j->nseg = last;
    j->tokens = rk_calloc(last, sizeof(int32_t *));
    j->n = rk_calloc(last, sizeof(uint32_t));
    j->keys = rk_calloc(last, sizeof(cc_key));
    j->ids = rk_calloc(last, sizeof(uint64_t));
    j->need = rk_calloc(last, 1);
    j->cont = rk_calloc(last, sizeof(rk_buf));
    j->meta = rk_calloc(last, sizeof(rk_buf));
    j->kv = rk_calloc(last, sizeof(float *));
    j->md = rk_calloc(last, sizeof(bl_craft_meta));
    if (!j->tokens || !j->n || !j->keys || !j->ids || !j->need || !j->cont || !j->meta || !j->kv || !j->md)
        goto nomem;
    j->prefill_tokens = 1;
    for (size_t i = 0; i < last; i++) {
        const svc_gen_seg *sg = &g->segs[i];
        if (!(j->tokens[i] = rk_malloc((size_t)sg->n * sizeof(int32_t))))
            goto nomem;
        memcpy(j->tokens[i], sg->tokens, (size_t)sg->n * sizeof(int32_t));
        j->n[i] = sg->n;
        j->keys[i] = sg->key;
        memcpy(&j->ids[i], sg->key.b, sizeof(uint64_t));
        j->need[i] = take[i]; /* (those skipped above were counted) */
        j->prefill_tokens += sg->n;
    }
    rk_free(take);
    return j;
nomem:
    rk_free(take);
    svc_metric_add(cm.skipped[SKIP_ERROR], (int64_t)want);
    svc_craft_job_free(j);
    return NULL;
}

/* A capture that failed: nothing will be stored (its candidates counted skipped as error). */
static rk_status job_failed(svc_craft_job *j, rk_status st)
{
    RK_WARN("Cache-Craft capture failed (%s: %s)", rk_status_name(st), rk_error_msg());
    svc_metric_add(cm.skipped[SKIP_ERROR], job_candidates(j));
    bl_capture_free(j->cap);
    j->cap = NULL;
    for (size_t i = 0; i < j->nseg; i++) {
        j->need[i] = 0;
        rk_free(j->kv[i]);
        j->kv[i] = NULL;
        bl_craft_meta_clear(&j->md[i]);
    }
    return st;
}

rk_status svc_craft_job_begin(const svc_chunk_ctx *x, svc_craft_job *j, bool *done)
{
    uint64_t t0 = rk_now_ns();
    *done = false;
    bl_segment *segs = rk_calloc(j->nseg, sizeof(bl_segment));
    rk_status st = segs ? RK_OK : RK_ERR_NOMEM;
    for (size_t i = 0; st == RK_OK && i < j->nseg; i++) {
        segs[i] = (bl_segment){.tokens = j->tokens[i], .n = j->n[i]};
        if (j->need[i] && !(j->kv[i] = rk_malloc(eng_kv_floats(x->model, j->n[i]) * sizeof(float))))
            st = RK_ERR_NOMEM;
    }
    if (st == RK_OK) /* (the capture copies segs) */
        st = bl_capture_start(x->model, x->backend, segs, j->nseg, j->ids, j->kv, j->md, &j->cap);
    rk_free(segs);
    j->ms += (double)(rk_now_ns() - t0) / 1e6;
    if (st != RK_OK)
        return job_failed(j, st);
    *done = j->cap == NULL;
    return RK_OK;
}

rk_status svc_craft_job_step(svc_craft_job *j, bool *done)
{
    uint64_t t0 = rk_now_ns();
    rk_status st = bl_capture_step(j->cap, done);
    j->ms += (double)(rk_now_ns() - t0) / 1e6;
    if (st != RK_OK)
        return job_failed(j, st);
    if (*done) {
        bl_capture_free(j->cap);
        j->cap = NULL;
    }
    return RK_OK;
}


void svc_craft_job_store(const svc_chunk_ctx *x, svc_craft_job *j)
{
    const char *model_id = eng_model_get_info(x->model)->id;
    for (size_t i = 1; i < j->nseg; i++) {
        if (!j->need[i] || (!j->cont[i].len && !j->kv[i]))
            continue;
        char model[CC_NAME_MAX + 1];
        rk_buf blob = RK_BUF_INIT;
        cc_put_args a;
        cc_key want, got;
        rk_status st = RK_OK;
        if (!j->cont[i].len && j->kv[i]) { /* encoded here, off the executor */
            if ((st = svc_kv_encode(x, j->kv[i], j->n[i], x->codec, x->level, &j->cont[i])) == RK_OK)
                st = bl_craft_encode(&j->md[i], &j->meta[i]);
            rk_free(j->kv[i]);
            j->kv[i] = NULL;
        }
        if (st == RK_OK)
            st = svc_craft_model(model_id, &j->keys[i - 1], model);
        if (st == RK_OK)
            st = cc_key_compute(model, j->tenant, j->tokens[i], j->n[i], &want);
        if (st == RK_OK && j->need[i] == 2) /* the unusable one first (a put keeps what is there) */
            cc_store_delete(x->store, j->tenant, &want);
        double cost = j->ms * (double)j->n[i] / (double)(j->prefill_tokens ? j->prefill_tokens : 1);
        if (st == RK_OK)
            st = svc_chunk_args(x, j->tokens[i], j->n[i], &j->cont[i], cost, &blob, &a);
        if (st == RK_OK) {
            a.model = model;
            a.craft = j->meta[i].data;
            a.craft_len = j->meta[i].len;
            st = cc_store_put(x->store, j->tenant, &a, &got);
        }
        if (st == RK_OK && !cc_key_equal(&got, &want))
            st = rk_error_set(RK_ERR_INTERNAL, "variant stored under an unexpected key");
        rk_buf_free(&blob);
        if (st == RK_OK) {
            svc_metric_add(cm.captured, 1);
        } else {
            int why = st == RK_ERR_QUOTA ? SKIP_QUOTA
                      : st == RK_ERR_DENIED || st == RK_ERR_NOT_FOUND ? SKIP_DENIED
                                                                       : SKIP_ERROR;
            if (why == SKIP_ERROR)
                RK_WARN("Cache-Craft variant not stored (%s: %s)", rk_status_name(st), rk_error_msg());
            svc_metric_add(cm.skipped[why], 1);
        }
    }
    svc_metric_add(cm.captures, 1);
}

void svc_craft_job_drop(svc_craft_job *j)
{
    if (!j)
        return;
    svc_metric_add(cm.skipped[SKIP_BUSY], job_candidates(j));
    svc_metric_add(cm.captures, 1);
    svc_craft_job_free(j);
}
