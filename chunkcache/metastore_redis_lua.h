/* metastore_redis_lua.h — private: the Lua scripts of the Redis metadata backend. Each runs
 * atomically inside Redis (a script is never interleaved with other commands), which is what
 * makes quota-checked admission and eviction exact with many writers on many nodes.
 * Every script takes the key prefix as ARGV[1]; key names are in docs/storage.md. */
#ifndef RAGKV_CC_REDIS_LUA_H
#define RAGKV_CC_REDIS_LUA_H

/* Shared helpers, prepended to the scripts that delete chunks.
 * drop(P, hex): delete one chunk and correct its namespace's usage; returns
 * {ns, size, csum, rec} or nil when absent. */
#define LUA_LIB                                                                                   \
    "local function drop(P, hex)\n"                                                               \
    "  local rk = P .. 'r:' .. hex\n"                                                             \
    "  local e = redis.call('HMGET', rk, 'ns', 'size', 'csum', 'pin', 'rec')\n"                   \
    "  if not e[1] then return nil end\n"                                                         \
    "  local ns, size = e[1], tonumber(e[2])\n"                                                   \
    "  redis.call('DEL', rk)\n"                                                                   \
    "  redis.call('ZREM', P .. 'z:' .. ns, hex)\n"                                                \
    "  redis.call('SREM', P .. 'n:' .. ns, hex)\n"                                                \
    "  redis.call('ZREM', P .. 'x', hex)\n"                                                       \
    "  local tk = P .. 't:' .. ns\n"                                                              \
    "  if redis.call('EXISTS', tk) == 1 then\n"                                                   \
    "    redis.call('HINCRBY', tk, 'bytes', -size)\n"                                             \
    "    redis.call('HINCRBY', tk, 'chunks', -1)\n"                                               \
    "    if e[4] == '1' then\n"                                                                   \
    "      redis.call('HINCRBY', tk, 'pb', -size)\n"                                              \
    "      redis.call('HINCRBY', tk, 'pc', -1)\n"                                                 \
    "    end\n"                                                                                   \
    "  end\n"                                                                                     \
    "  return e\n"                                                                                \
    "end\n"                                                                                       \
    "local function evict_lowest(P, ns, out)\n"                                                   \
    "  local m = redis.call('ZRANGE', P .. 'z:' .. ns, 0, 0, 'WITHSCORES')\n"                     \
    "  if #m == 0 then return nil end\n"                                                          \
    "  local e = drop(P, m[1])\n"                                                                 \
    "  redis.call('ZREM', P .. 'z:' .. ns, m[1])\n"                                               \
    "  redis.call('HSET', P .. 't:' .. ns, 'clock', m[2])\n"                                      \
    "  if not e then return 0 end\n"                                                              \
    "  out[#out + 1] = m[1]; out[#out + 1] = e[3]; out[#out + 1] = e[2]\n"                        \
    "  return tonumber(e[2])\n"                                                                   \
    "end\n"

/* INSERT: ARGV = P, hex, ns, size, csum, pin, cost, expires_ms, now_ms, force, rec.
 * Returns {0, evicted triples (hex, csum, size)...}, {-1} no tenant, {-2} exists, {-3} quota. */
#define LUA_INSERT                                                                                \
    LUA_LIB                                                                                       \
    "local P, hex, ns = ARGV[1], ARGV[2], ARGV[3]\n"                                              \
    "local size, cost = tonumber(ARGV[4]), tonumber(ARGV[7])\n"                                   \
    "local tk = P .. 't:' .. ns\n"                                                                \
    "if redis.call('EXISTS', tk) == 0 then return {-1} end\n"                                     \
    "local rk = P .. 'r:' .. hex\n"                                                               \
    "if redis.call('EXISTS', rk) == 1 then return {-2} end\n"                                     \
    "local t = redis.call('HMGET', tk, 'mb', 'mc', 'pol', 'bytes', 'chunks', 'pb', 'pc')\n"       \
    "local mb, mc, pol = tonumber(t[1]) or 0, tonumber(t[2]) or 0, t[3]\n"                        \
    "local b, c = tonumber(t[4]) or 0, tonumber(t[5]) or 0\n"                                     \
    "local pb, pc = tonumber(t[6]) or 0, tonumber(t[7]) or 0\n"                                   \
    "local function over(x, y) return (mb > 0 and x > mb) or (mc > 0 and y > mc) end\n"           \
    "local out = {0}\n"                                                                           \
    "if ARGV[10] ~= '1' and over(b + size, c + 1) then\n"                                         \
    "  if pol ~= '1' or over(pb + size, pc + 1) then return {-3} end\n"                           \
    "  while over(b + size, c + 1) do\n"                                                          \
    "    local freed = evict_lowest(P, ns, out)\n"                                                \
    "    if not freed then return {-3} end\n"                                                     \
    "    b = tonumber(redis.call('HGET', tk, 'bytes')) or 0\n"                                    \
    "    c = tonumber(redis.call('HGET', tk, 'chunks')) or 0\n"                                   \
    "  end\n"                                                                                     \
    "end\n"                                                                                       \
    "local clock = tonumber(redis.call('HGET', tk, 'clock')) or 0\n"                              \
    "redis.call('HMSET', rk, 'ns', ns, 'size', ARGV[4], 'csum', ARGV[5], 'pin', ARGV[6],\n"       \
    "  'cost', ARGV[7], 'hits', 0, 'last', ARGV[9], 'exp', ARGV[8], 'rec', ARGV[11])\n"           \
    "redis.call('SADD', P .. 'n:' .. ns, hex)\n"                                                  \
    "redis.call('HINCRBY', tk, 'bytes', size)\n"                                                  \
    "redis.call('HINCRBY', tk, 'chunks', 1)\n"                                                    \
    "if ARGV[6] == '1' then\n"                                                                    \
    "  redis.call('HINCRBY', tk, 'pb', size)\n"                                                   \
    "  redis.call('HINCRBY', tk, 'pc', 1)\n"                                                      \
    "else\n"                                                                                      \
    "  redis.call('ZADD', P .. 'z:' .. ns, clock + cost / math.max(size, 1), hex)\n"              \
    "end\n"                                                                                       \
    "if tonumber(ARGV[8]) > 0 then redis.call('ZADD', P .. 'x', ARGV[8], hex) end\n"              \
    "return out\n"

/* REMOVE: ARGV = P, hex, expect_csum ("0": any). Returns {0, rec} or {-1}. */
#define LUA_REMOVE                                                                                \
    LUA_LIB                                                                                       \
    "local P, hex = ARGV[1], ARGV[2]\n"                                                           \
    "if ARGV[3] ~= '0' then\n"                                                                    \
    "  local c = redis.call('HGET', P .. 'r:' .. hex, 'csum')\n"                                  \
    "  if c ~= ARGV[3] then return {-1} end\n"                                                    \
    "end\n"                                                                                       \
    "local e = drop(P, hex)\n"                                                                    \
    "if not e then return {-1} end\n"                                                             \
    "return {0, e[5]}\n"

/* TOUCH: ARGV = P, then (hex, n, now_ms) triples. Returns 0. */
#define LUA_TOUCH                                                                                 \
    "local P = ARGV[1]\n"                                                                         \
    "for i = 2, #ARGV, 3 do\n"                                                                    \
    "  local rk = P .. 'r:' .. ARGV[i]\n"                                                         \
    "  local e = redis.call('HMGET', rk, 'ns', 'size', 'cost', 'pin', 'hits', 'last')\n"          \
    "  if e[1] then\n"                                                                            \
    "    local hits = (tonumber(e[5]) or 0) + tonumber(ARGV[i + 1])\n"                            \
    "    local last = math.max(tonumber(e[6]) or 0, tonumber(ARGV[i + 2]))\n"                     \
    "    redis.call('HSET', rk, 'hits', hits)\n"                                                  \
    "    redis.call('HSET', rk, 'last', string.format('%.0f', last))\n"                           \
    "    if e[4] ~= '1' then\n"                                                                   \
    "      local clock = tonumber(redis.call('HGET', P .. 't:' .. e[1], 'clock')) or 0\n"         \
    "      local pr = clock + (hits + 1) * tonumber(e[3]) / math.max(tonumber(e[2]), 1)\n"        \
    "      redis.call('ZADD', P .. 'z:' .. e[1], pr, ARGV[i])\n"                                  \
    "    end\n"                                                                                   \
    "  end\n"                                                                                     \
    "end\n"                                                                                       \
    "return 0\n"

/* EVICT: ARGV = P, ns, bytes. Returns {0, triples...} or {-1} no tenant. */
#define LUA_EVICT                                                                                 \
    LUA_LIB                                                                                       \
    "local P, ns, want = ARGV[1], ARGV[2], tonumber(ARGV[3])\n"                                   \
    "if redis.call('EXISTS', P .. 't:' .. ns) == 0 then return {-1} end\n"                        \
    "local out, freed = {0}, 0\n"                                                                 \
    "while freed < want do\n"                                                                     \
    "  local f = evict_lowest(P, ns, out)\n"                                                      \
    "  if not f then break end\n"                                                                 \
    "  freed = freed + f\n"                                                                       \
    "end\n"                                                                                       \
    "return out\n"

/* EXPIRE: ARGV = P, now_ms. Removes up to 1000 expired chunks. Returns {0, triples...}. */
#define LUA_EXPIRE                                                                                \
    LUA_LIB                                                                                       \
    "local P = ARGV[1]\n"                                                                         \
    "local xs = redis.call('ZRANGEBYSCORE', P .. 'x', '-inf', ARGV[2], 'LIMIT', 0, 1000)\n"       \
    "local out = {0}\n"                                                                           \
    "for _, hex in ipairs(xs) do\n"                                                               \
    "  local e = drop(P, hex)\n"                                                                  \
    "  if e then out[#out + 1] = hex; out[#out + 1] = e[3]; out[#out + 1] = e[2] end\n"           \
    "end\n"                                                                                       \
    "return out\n"

/* TENANT_PUT: ARGV = P, name, max_bytes, max_chunks, policy. Returns 0. */
#define LUA_TENANT_PUT                                                                            \
    "local P, name = ARGV[1], ARGV[2]\n"                                                          \
    "local tk = P .. 't:' .. name\n"                                                              \
    "redis.call('SADD', P .. 'T', name)\n"                                                        \
    "redis.call('HMSET', tk, 'mb', ARGV[3], 'mc', ARGV[4], 'pol', ARGV[5])\n"                     \
    "for _, f in ipairs({'bytes', 'chunks', 'pb', 'pc', 'clock'}) do\n"                           \
    "  redis.call('HSETNX', tk, f, 0)\n"                                                          \
    "end\n"                                                                                       \
    "return 0\n"

/* TENANT_DEL: ARGV = P, name. Returns {0, triples...} or {-1}. */
#define LUA_TENANT_DEL                                                                            \
    "local P, name = ARGV[1], ARGV[2]\n"                                                          \
    "local tk = P .. 't:' .. name\n"                                                              \
    "if redis.call('EXISTS', tk) == 0 then return {-1} end\n"                                     \
    "local out = {0}\n"                                                                           \
    "for _, hex in ipairs(redis.call('SMEMBERS', P .. 'n:' .. name)) do\n"                        \
    "  local e = redis.call('HMGET', P .. 'r:' .. hex, 'csum', 'size')\n"                         \
    "  if e[1] then out[#out + 1] = hex; out[#out + 1] = e[1]; out[#out + 1] = e[2] end\n"        \
    "  redis.call('DEL', P .. 'r:' .. hex)\n"                                                     \
    "  redis.call('ZREM', P .. 'x', hex)\n"                                                       \
    "end\n"                                                                                       \
    "for _, t in ipairs(redis.call('SMEMBERS', P .. 'g:' .. name)) do\n"                          \
    "  redis.call('SREM', P .. 'G:' .. t, name)\n"                                                \
    "end\n"                                                                                       \
    "for _, ns in ipairs(redis.call('SMEMBERS', P .. 'G:' .. name)) do\n"                         \
    "  redis.call('SREM', P .. 'g:' .. ns, name)\n"                                               \
    "end\n"                                                                                       \
    "redis.call('DEL', tk, P .. 'n:' .. name, P .. 'z:' .. name, P .. 'g:' .. name,\n"            \
    "  P .. 'G:' .. name)\n"                                                                      \
    "redis.call('SREM', P .. 'T', name)\n"                                                        \
    "return out\n"

/* GRANT: ARGV = P, ns, tenant, on ("1"/"0"). Returns 0 or -1 (either does not exist). */
#define LUA_GRANT                                                                                 \
    "local P, ns, t = ARGV[1], ARGV[2], ARGV[3]\n"                                                \
    "if redis.call('EXISTS', P .. 't:' .. ns) == 0 or\n"                                          \
    "   redis.call('EXISTS', P .. 't:' .. t) == 0 then return -1 end\n"                          \
    "if ARGV[4] == '1' then\n"                                                                    \
    "  redis.call('SADD', P .. 'g:' .. ns, t)\n"                                                  \
    "  redis.call('SADD', P .. 'G:' .. t, ns)\n"                                                  \
    "else\n"                                                                                      \
    "  redis.call('SREM', P .. 'g:' .. ns, t)\n"                                                  \
    "  redis.call('SREM', P .. 'G:' .. t, ns)\n"                                                  \
    "end\n"                                                                                       \
    "return 0\n"

#endif
