/* redis_private.h — private: helpers shared by the sync and async Redis backends. */
#ifndef RAGKV_CC_REDIS_PRIVATE_H
#define RAGKV_CC_REDIS_PRIVATE_H

#include <hiredis/hiredis.h>

#include "ragkv/record.h"

/* Fill out from the reply to HMGET <record key> rec hits last. RK_ERR_NOT_FOUND for a
 * missing record; RK_ERR_META/FORMAT/CORRUPT for a malformed one. */
rk_status cc_redis_parse_record(const redisReply *rep, const cc_key *key, cc_record *out);

#endif
