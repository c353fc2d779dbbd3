/*
 * fuzz_request — the server's input path below the socket: frame headers and request payload
 * decoding, fed a byte stream that may hold several frames (as a pipelining client sends).
 * Every frame is decoded with the same limits the daemon uses; nothing may crash, leak or read
 * out of bounds, whatever the bytes.
 */
#include <stdint.h>
#include <stddef.h>

#include "ragkv/proto.h"
#include "ragkv/svc_request.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    svc_request_limits lim;
    svc_request_limits_default(&lim);
    lim.max_tokens = 1u << 16; /* keep allocations small under the fuzzer */
    while (size >= RK_PROTO_HDR_SIZE) {
        rk_proto_hdr h;
        if (rk_proto_hdr_decode(data, size, RK_PROTO_DEFAULT_MAX_FRAME, &h) != RK_OK)
            break; /* framing lost: the daemon closes the connection */
        if (size - RK_PROTO_HDR_SIZE < h.length)
            break; /* incomplete frame: the daemon waits for more */
        svc_request rq;
        svc_request_decode(&h, data + RK_PROTO_HDR_SIZE, h.length, &lim, &rq);
        svc_request_free(&rq);
        data += RK_PROTO_HDR_SIZE + h.length;
        size -= RK_PROTO_HDR_SIZE + h.length;
    }
    return 0;
}
