/* json.c — strict recursive-descent JSON parser (see ragkv/json.h). */
#include "ragkv/json.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ragkv/alloc.h"
#include "ragkv/bytes.h"

typedef struct parser {
    const unsigned char *p; /* the text, borrowed */
    size_t len;             /* bytes of text */
    size_t off;             /* next byte to read */
    int depth;              /* open arrays/objects */
} parser;

static rk_status fail(parser *ps, const char *why)
{
    return rk_error_set(RK_ERR_FORMAT, "JSON: %s at byte %zu", why, ps->off);
}

static void skip_ws(parser *ps)
{
    while (ps->off < ps->len) {
        unsigned char c = ps->p[ps->off];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r')
            break;
        ps->off++;
    }
}

static void free_value(rk_json *v)
{
    if (v->type == RK_JSON_STRING) {
        rk_free(v->str);
    } else if (v->type == RK_JSON_ARRAY || v->type == RK_JSON_OBJECT) {
        for (size_t i = 0; i < v->len; i++) {
            free_value(&v->items[i]);
            if (v->keys)
                rk_free(v->keys[i]);
        }
        rk_free(v->items);
        rk_free(v->keys);
    }
}

static rk_status parse_value(parser *ps, rk_json *out);

/* Length of the valid UTF-8 sequence at s (n bytes available), 0 when invalid. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    if (c < 0x80)
        return 1;
    size_t k;
    uint32_t cp;
    if (c >= 0xc2 && c <= 0xdf) {
        k = 2;
        cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
        k = 3;
        cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        k = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (n < k)
        return 0;
    for (size_t i = 1; i < k; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = cp << 6 | (s[i] & 0x3f);
    }
    if ((k == 3 && cp < 0x800) || (k == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
        (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return k;
}

static void put_utf8(rk_buf *b, uint32_t cp)
{
    uint8_t t[4];
    size_t n;
    if (cp < 0x80) {
        t[0] = (uint8_t)cp;
        n = 1;
    } else if (cp < 0x800) {
        t[0] = (uint8_t)(0xc0 | cp >> 6);
        t[1] = (uint8_t)(0x80 | (cp & 0x3f));
        n = 2;
    } else if (cp < 0x10000) {
        t[0] = (uint8_t)(0xe0 | cp >> 12);
        t[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3f));
        t[2] = (uint8_t)(0x80 | (cp & 0x3f));
        n = 3;
    } else {
        t[0] = (uint8_t)(0xf0 | cp >> 18);
        t[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3f));
        t[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3f));
        t[3] = (uint8_t)(0x80 | (cp & 0x3f));
        n = 4;
    }
    rk_buf_append(b, t, n);
}

static bool hex4(parser *ps, uint32_t *out)
{
    if (ps->len - ps->off < 4)
        return false;
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned char c = ps->p[ps->off + (size_t)i];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= (uint32_t)(c - '0');
        else if (c >= 'a' && c <= 'f')
            v |= (uint32_t)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            v |= (uint32_t)(c - 'A' + 10);
        else
            return false;
    }
    ps->off += 4;
    *out = v;
    return true;
}

/* Parse a string starting at the opening quote; *out (caller frees) and *outlen. */
static rk_status parse_string(parser *ps, char **out, size_t *outlen)
{
    rk_buf b = RK_BUF_INIT;
    rk_status st;
    ps->off++; /* opening quote */
    for (;;) {
        if (ps->off >= ps->len) {
            st = fail(ps, "unterminated string");
            goto fail;
        }
        unsigned char c = ps->p[ps->off];
        if (c == '"') {
            ps->off++;
            break;
        }
        if (c < 0x20) {
            st = fail(ps, "control character in string");
            goto fail;
        }
        if (c == '\\') {
            ps->off++;
            if (ps->off >= ps->len) {
                st = fail(ps, "unterminated escape");
                goto fail;
            }
            char e = (char)ps->p[ps->off++];
            uint8_t ch;
            switch (e) {
            case '"': ch = '"'; break;
            case '\\': ch = '\\'; break;
            case '/': ch = '/'; break;
            case 'b': ch = '\b'; break;
            case 'f': ch = '\f'; break;
            case 'n': ch = '\n'; break;
            case 'r': ch = '\r'; break;
            case 't': ch = '\t'; break;
            case 'u': {
                uint32_t cp;
                if (!hex4(ps, &cp)) {
                    st = fail(ps, "bad \\u escape");
                    goto fail;
                }
                if (cp >= 0xdc00 && cp <= 0xdfff) {
                    st = fail(ps, "unpaired low surrogate");
                    goto fail;
                }
                if (cp >= 0xd800 && cp <= 0xdbff) {
                    uint32_t lo;
                    if (ps->len - ps->off < 2 || ps->p[ps->off] != '\\' || ps->p[ps->off + 1] != 'u') {
                        st = fail(ps, "unpaired high surrogate");
                        goto fail;
                    }
                    ps->off += 2;
                    if (!hex4(ps, &lo) || lo < 0xdc00 || lo > 0xdfff) {
                        st = fail(ps, "bad surrogate pair");
                        goto fail;
                    }
                    cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                }
                put_utf8(&b, cp);
                continue;
            }
            default:
                ps->off--;
                st = fail(ps, "unknown escape");
                goto fail;
            }
            rk_buf_put_u8(&b, ch);
            continue;
        }
        size_t k = utf8_len(ps->p + ps->off, ps->len - ps->off);
        if (k == 0) {
            st = fail(ps, "invalid UTF-8");
            goto fail;
        }
        rk_buf_append(&b, ps->p + ps->off, k);
        ps->off += k;
    }
    rk_buf_put_u8(&b, 0);
    if (b.failed) {
        st = rk_error_set(RK_ERR_NOMEM, "JSON: out of memory");
        goto fail;
    }
    size_t n;
    *out = (char *)rk_buf_steal(&b, &n);
    *outlen = n - 1;
    return RK_OK;
fail:
    rk_buf_free(&b);
    return st;
}

static rk_status parse_number(parser *ps, rk_json *out)
{
    size_t start = ps->off;
    const unsigned char *p = ps->p;
    size_t i = ps->off;
    bool integral = true;
    if (i < ps->len && p[i] == '-')
        i++;
    if (i >= ps->len || !(p[i] >= '0' && p[i] <= '9'))
        return fail(ps, "bad number");
    if (p[i] == '0') {
        i++;
        if (i < ps->len && p[i] >= '0' && p[i] <= '9')
            return fail(ps, "leading zero in number");
    } else {
        while (i < ps->len && p[i] >= '0' && p[i] <= '9')
            i++;
    }
    if (i < ps->len && p[i] == '.') {
        integral = false;
        i++;
        if (i >= ps->len || !(p[i] >= '0' && p[i] <= '9')) {
            ps->off = i;
            return fail(ps, "digit expected after '.'");
        }
        while (i < ps->len && p[i] >= '0' && p[i] <= '9')
            i++;
    }
    if (i < ps->len && (p[i] == 'e' || p[i] == 'E')) {
        integral = false;
        i++;
        if (i < ps->len && (p[i] == '+' || p[i] == '-'))
            i++;
        if (i >= ps->len || !(p[i] >= '0' && p[i] <= '9')) {
            ps->off = i;
            return fail(ps, "digit expected in exponent");
        }
        while (i < ps->len && p[i] >= '0' && p[i] <= '9')
            i++;
    }
    char tmp[64];
    size_t n = i - start;
    if (n >= sizeof(tmp))
        return fail(ps, "number too long");
    memcpy(tmp, p + start, n);
    tmp[n] = 0;
    out->type = RK_JSON_NUMBER;
    out->num = strtod(tmp, NULL);
    if (!isfinite(out->num))
        return fail(ps, "number out of range");
    if (integral) {
        errno = 0;
        long long v = strtoll(tmp, NULL, 10);
        if (errno == 0) {
            out->is_int = true;
            out->i = v;
        }
    }
    ps->off = i;
    return RK_OK;
}

static bool literal(parser *ps, const char *word)
{
    size_t n = strlen(word);
    if (ps->len - ps->off < n || memcmp(ps->p + ps->off, word, n) != 0)
        return false;
    ps->off += n;
    return true;
}

/* Append a zeroed slot to a container being built; returns it or NULL on NOMEM. */
static rk_json *grow(rk_json *c, size_t *cap, bool with_keys)
{
    if (c->len == *cap) {
        size_t ncap = *cap ? *cap * 2 : 4;
        rk_json *items = rk_realloc(c->items, ncap * sizeof(rk_json));
        if (!items)
            return NULL;
        c->items = items;
        if (with_keys) {
            char **keys = rk_realloc(c->keys, ncap * sizeof(char *));
            if (!keys)
                return NULL;
            c->keys = keys;
        }
        *cap = ncap;
    }
    memset(&c->items[c->len], 0, sizeof(rk_json));
    return &c->items[c->len];
}

static rk_status parse_container(parser *ps, rk_json *out, bool object)
{
    size_t cap = 0;
    rk_status st;
    out->type = object ? RK_JSON_OBJECT : RK_JSON_ARRAY;
    if (++ps->depth > RK_JSON_MAX_DEPTH)
        return fail(ps, "nesting too deep");
    ps->off++; /* [ or { */
    skip_ws(ps);
    char close = object ? '}' : ']';
    if (ps->off < ps->len && ps->p[ps->off] == (unsigned char)close) {
        ps->off++;
        ps->depth--;
        return RK_OK;
    }
    for (;;) {
        skip_ws(ps);
        rk_json *slot = grow(out, &cap, object);
        if (!slot)
            return rk_error_set(RK_ERR_NOMEM, "JSON: out of memory");
        char *key = NULL;
        if (object) {
            size_t klen;
            if (ps->off >= ps->len || ps->p[ps->off] != '"')
                return fail(ps, "object key expected");
            size_t at = ps->off;
            if ((st = parse_string(ps, &key, &klen)) != RK_OK)
                return st;
            if (strlen(key) != klen) {
                rk_free(key);
                ps->off = at;
                return fail(ps, "NUL in object key");
            }
            for (size_t i = 0; i < out->len; i++)
                if (!strcmp(out->keys[i], key)) {
                    rk_free(key);
                    ps->off = at;
                    return fail(ps, "duplicate object key");
                }
            skip_ws(ps);
            if (ps->off >= ps->len || ps->p[ps->off] != ':') {
                rk_free(key);
                return fail(ps, "':' expected");
            }
            ps->off++;
            skip_ws(ps);
        }
        st = parse_value(ps, slot);
        if (object)
            out->keys[out->len] = key;
        out->len++; /* even on failure, so that free_value releases what was built */
        if (st != RK_OK)
            return st;
        skip_ws(ps);
        if (ps->off >= ps->len)
            return fail(ps, object ? "unterminated object" : "unterminated array");
        unsigned char c = ps->p[ps->off];
        if (c == ',') {
            ps->off++;
            continue;
        }
        if (c == (unsigned char)close) {
            ps->off++;
            break;
        }
        return fail(ps, object ? "',' or '}' expected" : "',' or ']' expected");
    }
    ps->depth--;
    return RK_OK;
}

static rk_status parse_value(parser *ps, rk_json *out)
{
    skip_ws(ps);
    if (ps->off >= ps->len)
        return fail(ps, "value expected");
    unsigned char c = ps->p[ps->off];
    switch (c) {
    case '{':
        return parse_container(ps, out, true);
    case '[':
        return parse_container(ps, out, false);
    case '"':
        out->type = RK_JSON_STRING;
        return parse_string(ps, &out->str, &out->len);
    case 't':
        if (!literal(ps, "true"))
            return fail(ps, "bad literal");
        out->type = RK_JSON_BOOL;
        out->boolean = true;
        return RK_OK;
    case 'f':
        if (!literal(ps, "false"))
            return fail(ps, "bad literal");
        out->type = RK_JSON_BOOL;
        return RK_OK;
    case 'n':
        if (!literal(ps, "null"))
            return fail(ps, "bad literal");
        out->type = RK_JSON_NULL;
        return RK_OK;
    default:
        if (c == '-' || (c >= '0' && c <= '9'))
            return parse_number(ps, out);
        return fail(ps, "unexpected character");
    }
}

rk_status rk_json_parse(const char *text, size_t len, rk_json **out)
{
    *out = NULL;
    if (!text && len)
        return rk_error_set(RK_ERR_INVALID, "JSON: NULL text");
    rk_json *root = rk_calloc(1, sizeof(rk_json));
    if (!root)
        return rk_error_set(RK_ERR_NOMEM, "JSON: out of memory");
    parser ps = {(const unsigned char *)text, len, 0, 0};
    rk_status st = parse_value(&ps, root);
    if (st != RK_OK)
        goto fail;
    skip_ws(&ps);
    if (ps.off != ps.len) {
        st = fail(&ps, "trailing characters after the value");
        goto fail;
    }
    *out = root;
    return RK_OK;
fail:
    rk_json_free(root);
    return st;
}

void rk_json_free(rk_json *root)
{
    if (!root)
        return;
    free_value(root);
    rk_free(root);
}

const rk_json *rk_json_get(const rk_json *obj, const char *key)
{
    if (!obj || obj->type != RK_JSON_OBJECT)
        return NULL;
    for (size_t i = 0; i < obj->len; i++)
        if (!strcmp(obj->keys[i], key))
            return &obj->items[i];
    return NULL;
}

bool rk_json_get_int(const rk_json *obj, const char *key, int64_t *out)
{
    const rk_json *v = rk_json_get(obj, key);
    if (!v || v->type != RK_JSON_NUMBER || !v->is_int)
        return false;
    *out = v->i;
    return true;
}

bool rk_json_get_num(const rk_json *obj, const char *key, double *out)
{
    const rk_json *v = rk_json_get(obj, key);
    if (!v || v->type != RK_JSON_NUMBER)
        return false;
    *out = v->num;
    return true;
}

bool rk_json_get_bool(const rk_json *obj, const char *key, bool *out)
{
    const rk_json *v = rk_json_get(obj, key);
    if (!v || v->type != RK_JSON_BOOL)
        return false;
    *out = v->boolean;
    return true;
}

const char *rk_json_get_str(const rk_json *obj, const char *key)
{
    const rk_json *v = rk_json_get(obj, key);
    return v && v->type == RK_JSON_STRING ? v->str : NULL;
}
