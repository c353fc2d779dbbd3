/* test_rendezvous.c — the placement function nodes and clients share (ragkv/client.h). */
#include <criterion/criterion.h>
#include <string.h>

#include "ragkv/client.h"

static void key_of(unsigned i, uint8_t key[32])
{
    for (int b = 0; b < 32; b++)
        key[b] = (uint8_t)(i * 131u + (unsigned)b * 7u + (i >> 8));
}

/* The same number the Python client computes (hashlib.blake2b, digest_size 16): clients in
 * both languages must route exactly as ragkvd places. */
Test(rendezvous, matches_the_python_client)
{
    uint8_t key[32];
    for (int b = 0; b < 32; b++)
        key[b] = (uint8_t)b;
    cr_assert_eq(ragkv_node_score("n1", key), 3104819422058928252ull);
}

/* Keys spread evenly, and losing a node moves only that node's keys. */
Test(rendezvous, balanced_and_minimal_movement)
{
    ragkv_node three[3] = {{"node1", "a"}, {"node2", "b"}, {"node3", "c"}};
    int count[3] = {0};
    int moved = 0, orphaned = 0;
    const unsigned n = 3000;
    for (unsigned i = 0; i < n; i++) {
        uint8_t key[32];
        key_of(i, key);
        ragkv_node r3[3], r2[2];
        memcpy(r3, three, sizeof(r3));
        memcpy(r2, three, sizeof(r2)); /* node3 gone */
        ragkv_rank_nodes(r3, 3, key);
        ragkv_rank_nodes(r2, 2, key);
        count[r3[0].id[4] - '1']++;
        if (strcmp(r3[0].id, "node3") == 0) {
            orphaned++;
            cr_assert_str_eq(r2[0].id, r3[1].id, "a lost owner's keys go to their second choice");
        } else if (strcmp(r3[0].id, r2[0].id) != 0) {
            moved++;
        }
    }
    for (int k = 0; k < 3; k++)
        cr_assert(count[k] > (int)n / 3 - 150 && count[k] < (int)n / 3 + 150, "node%d owns %d of %u", k + 1,
                  count[k], n);
    cr_assert_eq(moved, 0, "keys of surviving nodes must stay put");
    cr_assert(orphaned > 0);
}
