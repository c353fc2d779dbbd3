/* cluster.c — libragkv's cluster routing: the live node list and rendezvous ranking. */
#include <stdlib.h>
#include <string.h>

#include "ragkv/alloc.h"
#include "ragkv/bytes.h"
#include "ragkv/client.h"
#include "ragkv/hash.h"

rk_status ragkv_cluster_nodes(ragkv_conn *c, uint32_t *replicas, ragkv_node **nodes, size_t *n)
{
    uint8_t *p = NULL;
    uint32_t len = 0;
    rk_status st = ragkv_call(c, RK_OP_CLUSTER_NODES, NULL, 0, &p, &len);
    if (st != RK_OK)
        return st;
    rk_reader r = rk_reader_make(p, len);
    uint32_t rep = rk_reader_u32(&r);
    uint32_t cnt = rk_reader_u32(&r);
    /* each node is at least two empty strings (4 bytes): a count beyond that is a lie */
    ragkv_node *v = NULL;
    if (!r.short_read && (size_t)cnt * 4 <= rk_reader_left(&r))
        v = rk_calloc(cnt ? cnt : 1, sizeof(ragkv_node));
    for (uint32_t i = 0; v && i < cnt; i++) {
        rk_reader_str(&r, v[i].id, sizeof(v[i].id));
        rk_reader_str(&r, v[i].addr, sizeof(v[i].addr));
    }
    bool ok = v && !r.short_read && rk_reader_left(&r) == 0;
    rk_free(p);
    if (!ok) {
        rk_free(v);
        return rk_error_set(RK_ERR_PROTOCOL, "CLUSTER_NODES response malformed");
    }
    *replicas = rep;
    *nodes = v;
    *n = cnt;
    return RK_OK;
}

uint64_t ragkv_node_score(const char *node_id, const uint8_t key[32])
{
    rk_blake2b_state h;
    uint8_t out[16] = {0};
    if (rk_blake2b_init(&h, sizeof(out)) != RK_OK)
        return 0;
    rk_blake2b_update(&h, node_id, strlen(node_id));
    rk_blake2b_update(&h, "", 1); /* the NUL separates id and key */
    rk_blake2b_update(&h, key, 32);
    if (rk_blake2b_final(&h, out, sizeof(out)) != RK_OK)
        return 0;
    return rk_get_le64(out);
}

/* qsort has no context argument: the scores travel with the nodes. */
struct ranked {
    uint64_t score;
    ragkv_node node;
};

static int by_score(const void *a, const void *b)
{
    const struct ranked *x = a, *y = b;
    if (x->score != y->score)
        return x->score > y->score ? -1 : 1;
    return strcmp(x->node.id, y->node.id);
}

void ragkv_rank_nodes(ragkv_node *nodes, size_t n, const uint8_t key[32])
{
    struct ranked *r = n ? rk_malloc(n * sizeof(*r)) : NULL;
    if (!r)
        return;
    for (size_t i = 0; i < n; i++)
        r[i] = (struct ranked){ragkv_node_score(nodes[i].id, key), nodes[i]};
    qsort(r, n, sizeof(*r), by_score);
    for (size_t i = 0; i < n; i++)
        nodes[i] = r[i].node;
    rk_free(r);
}
