/*
 * ragkv/proto.h — the framing of ragkv's binary protocol v1, shared by the daemon and the
 * clients. docs/protocol.md is the specification; this header is its C rendering.
 *
 * Every message is a 24-byte header followed by `length` payload bytes, all little-endian:
 *
 *     off size field
 *       0    2 magic       0x4B52 ("RK" on the wire: 52 4B)
 *       2    1 version     1
 *       3    1 type        1 request, 2 response (final), 3 stream item (more follow)
 *       4    2 opcode      RK_OP_*
 *       6    2 flags       0 (reserved; receivers reject other values)
 *       8    8 request_id  chosen by the client, echoed in every frame answering it
 *      16    4 status      0 in requests; an rk_status value in responses
 *      20    4 length      payload bytes that follow
 *
 * Parsing is incremental and allocation-free, so it runs on partial socket reads:
 *
 *     rk_proto_hdr h;
 *     rk_status st = rk_proto_hdr_decode(buf, len, max_payload, &h);
 *     if (st == RK_ERR_TRUNCATED) ... read more ...;
 *     else if (st != RK_OK) ... framing lost: send an error, close ...;
 *     else if (len >= RK_PROTO_HDR_SIZE + h.length) ... a whole frame is here ...;
 *
 * Payload primitives (docs/protocol.md §2): u8/u16/u32/u64/i32/f32, `str` (u16 length + UTF-8
 * bytes, no NUL), `blob` (u32 length + bytes), `tokens` (u32 count + count x i32), `key`
 * (32 raw bytes). rk_reader/rk_buf (ragkv/bytes.h) read and write them.
 */
#ifndef RAGKV_PROTO_H
#define RAGKV_PROTO_H

#include <stddef.h>
#include <stdint.h>

#include "ragkv/bytes.h"
#include "ragkv/status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define RK_PROTO_MAGIC 0x4B52u
#define RK_PROTO_VERSION 1
#define RK_PROTO_HDR_SIZE 24
#define RK_PROTO_KEY_SIZE 32
#define RK_PROTO_MAX_STR 4096            /* longest `str` a receiver accepts */
#define RK_PROTO_DEFAULT_MAX_FRAME (64u << 20) /* payload cap after AUTH (configurable) */
#define RK_PROTO_UNAUTH_MAX_FRAME 4096u  /* payload cap before AUTH succeeds */

typedef enum rk_proto_type {
    RK_PT_REQUEST = 1,
    RK_PT_RESPONSE = 2, /* final frame for a request id */
    RK_PT_STREAM = 3,   /* partial response; a RESPONSE with the same id ends the stream */
} rk_proto_type;

typedef enum rk_opcode {
    RK_OP_HELLO = 0x0001,
    RK_OP_AUTH = 0x0002,
    RK_OP_PING = 0x0003,
    RK_OP_PUT_CHUNK = 0x0010,
    RK_OP_PUT_KV = 0x0011,
    RK_OP_GET_KV = 0x0012,
    RK_OP_LOOKUP = 0x0013,
    RK_OP_DELETE = 0x0014,
    RK_OP_STATS = 0x0015,
    RK_OP_GENERATE = 0x0020,
    RK_OP_PREFILL_KV = 0x0021,
    RK_OP_CLUSTER_NODES = 0x0030,
    /* admin operations: only on a connection authenticated with the admin credential */
    RK_OP_TENANT_CREATE = 0x0100,
    RK_OP_TENANT_DELETE = 0x0101,
    RK_OP_TENANT_LIST = 0x0102,
    RK_OP_TOKEN_ROTATE = 0x0103,
    RK_OP_QUOTA_SET = 0x0104,
    RK_OP_QUOTA_GET = 0x0105,
    RK_OP_NS_GRANT = 0x0106,
    RK_OP_NS_REVOKE = 0x0107,
    RK_OP_EVICT = 0x0108,
    RK_OP_FLUSH = 0x0109,
    RK_OP_INSPECT = 0x010A,
    RK_OP_CONFIG_GET = 0x010B,
    RK_OP_SHUTDOWN = 0x010C,
    RK_OP_TENANT_STATS = 0x010D,
    /* peer operations: only between cluster nodes, authenticated with the cluster secret */
    RK_OP_PEER_GET = 0x0200,
    RK_OP_PEER_PUT = 0x0201,
} rk_opcode;

/* A decoded frame header. */
typedef struct rk_proto_hdr {
    uint8_t version;     /* RK_PROTO_VERSION */
    uint8_t type;        /* rk_proto_type */
    uint16_t opcode;     /* rk_opcode */
    uint16_t flags;      /* 0 */
    uint64_t request_id; /* echoed */
    int32_t status;      /* rk_status in responses */
    uint32_t length;     /* payload bytes after the header */
} rk_proto_hdr;

/* Write h as 24 bytes into out. */
void rk_proto_hdr_encode(const rk_proto_hdr *h, uint8_t out[RK_PROTO_HDR_SIZE]);

/* Decode the header at the start of buf[len].
 *  RK_OK             *h filled (the payload may still be incomplete: compare len);
 *  RK_ERR_TRUNCATED  fewer than 24 bytes: read more;
 *  RK_ERR_PROTOCOL   bad magic, version, type or flags: framing is lost, close;
 *  RK_ERR_LIMIT      h->length > max_payload: *h is filled so the peer can be told, then close. */
rk_status rk_proto_hdr_decode(const uint8_t *buf, size_t len, uint32_t max_payload, rk_proto_hdr *h);

/* "HELLO", "PUT_CHUNK", ...; "UNKNOWN" for others. Static storage. */
const char *rk_opcode_name(uint16_t opcode);

/* 1 for the admin opcodes (0x0100..0x01FF). */
static inline int rk_opcode_is_admin(uint16_t op) { return (op & 0xFF00) == 0x0100; }

/* 1 for the peer opcodes (0x0200..0x02FF). */
static inline int rk_opcode_is_peer(uint16_t op) { return (op & 0xFF00) == 0x0200; }

/* ---- payload primitives over rk_buf / rk_reader ------------------------------------- */

/* Append a `str` (u16 length + bytes); strings longer than RK_PROTO_MAX_STR mark b failed. */
void rk_buf_put_str(rk_buf *b, const char *s);
/* Append `tokens` (u32 count + count x i32 little-endian). */
void rk_buf_put_tokens(rk_buf *b, const int32_t *tokens, uint32_t n);
void rk_buf_put_f32(rk_buf *b, float v);

/* Read a `str` into out[outlen] (NUL-terminated). Sets r->short_read on truncation, on a
 * length above RK_PROTO_MAX_STR or outlen-1, or on an embedded NUL byte. */
void rk_reader_str(rk_reader *r, char *out, size_t outlen);
/* Read `tokens`: *out gets a fresh array (caller frees with rk_free; NULL when count is 0),
 * *n the count. Counts above max_tokens, truncation, or no memory set short_read. */
void rk_reader_tokens(rk_reader *r, uint32_t max_tokens, int32_t **out, uint32_t *n);
float rk_reader_f32(rk_reader *r);

#ifdef __cplusplus
}
#endif
#endif
