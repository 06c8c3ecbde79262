/*  wsframing - Jupyter kernel WebSocket framings (v1 binary and legacy JSON). */
#include "wsframing.h"
#include "../buf/wbuf.h"
#include "../../base/jx.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

//  More offsets than this is not a real message (4 parts, a channel and the end, plus
//  buffers; widgets send a handful).
#define MAX_OFFSETS 1024

static uint64_t s_get_le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

static void s_put_le64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++, v >>= 8) p[i] = (unsigned char) (v & 0xff);
}

static uint32_t s_get_be32(const unsigned char *p)
{
    return (uint32_t) p[0] << 24 | (uint32_t) p[1] << 16 | (uint32_t) p[2] << 8 | p[3];
}

static void s_put_be32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char) (v >> 24);
    p[1] = (unsigned char) (v >> 16);
    p[2] = (unsigned char) (v >> 8);
    p[3] = (unsigned char) v;
}

static int s_client_channel(const char *name, size_t len, kchan_type_t *channel, char *why,
                            size_t why_size)
{
    for (size_t i = 0; i < len; i++)
        if ((unsigned char) name[i] < 0x20 || (unsigned char) name[i] > 0x7e) {
            snprintf(why, why_size, "channel name is not printable ASCII");
            return -1;
        }
    int type = kchan_type_parse(name, len);
    if (type != KCH_SHELL && type != KCH_CONTROL && type != KCH_STDIN) {
        snprintf(why, why_size, "no such channel for clients: '%.*s'", (int) (len > 32 ? 32 : len),
                 name);
        return -1;
    }
    *channel = (kchan_type_t) type;
    return 0;
}

static kmsg_t *s_decode_v1(const unsigned char *data, size_t len, kchan_type_t *channel,
                           char *why, size_t why_size)
{
    if (len < 8) {
        snprintf(why, why_size, "v1 frame shorter than its offset count");
        return NULL;
    }
    uint64_t n = s_get_le64(data);
    //  channel + 4 parts + end = at least 6 offsets.
    if (n < 6 || n > MAX_OFFSETS || 8 + 8 * n > len) {
        snprintf(why, why_size, "v1 frame has a bad offset count (%llu)", (unsigned long long) n);
        return NULL;
    }
    uint64_t offsets[MAX_OFFSETS];
    for (uint64_t i = 0; i < n; i++) offsets[i] = s_get_le64(data + 8 + 8 * i);
    if (offsets[0] != 8 + 8 * n || offsets[n - 1] != len) {
        snprintf(why, why_size, "v1 offsets do not frame the message (first %llu, last %llu, length %zu)",
                 (unsigned long long) offsets[0], (unsigned long long) offsets[n - 1], len);
        return NULL;
    }
    for (uint64_t i = 1; i < n; i++)
        if (offsets[i] < offsets[i - 1] || offsets[i] > len) {
            snprintf(why, why_size, "v1 offsets out of order or out of range");
            return NULL;
        }
    if (s_client_channel((const char *) data + offsets[0], (size_t) (offsets[1] - offsets[0]),
                         channel, why, why_size))
        return NULL;
    const void *parts[4];
    size_t lens[4];
    for (int i = 0; i < 4; i++) {
        parts[i] = data + offsets[1 + i];
        lens[i] = (size_t) (offsets[2 + i] - offsets[1 + i]);
    }
    size_t nbuffers = (size_t) (n - 6);
    const void *buffers[MAX_OFFSETS];
    size_t buffer_lens[MAX_OFFSETS];
    for (size_t i = 0; i < nbuffers; i++) {
        buffers[i] = data + offsets[5 + i];
        buffer_lens[i] = (size_t) (offsets[6 + i] - offsets[5 + i]);
    }
    kmsg_t *msg = kmsg_new_raw(parts, lens, nbuffers, buffers, buffer_lens);
    if (!msg) snprintf(why, why_size, "out of memory");
    return msg;
}

//  Legacy JSON message (already parsed) plus buffers -> kmsg. The four dicts are
//  re-serialized: the legacy framing has no raw bytes to pass through.
static kmsg_t *s_from_json(json_t *doc, size_t nbuffers, const void *const *buffers,
                           const size_t *buffer_lens, kchan_type_t *channel, char *why,
                           size_t why_size)
{
    if (!json_is_object(doc)) {
        snprintf(why, why_size, "message is not a JSON object");
        return NULL;
    }
    const char *name = "shell";  //  a message without a channel goes to shell
    size_t name_len = 5;
    if (jx_get_strn(doc, "channel", &name, &name_len, true)) {
        snprintf(why, why_size, "'channel' must be a string");
        return NULL;
    }
    if (s_client_channel(name, name_len, channel, why, why_size)) return NULL;
    static const char *keys[4] = {"header", "parent_header", "metadata", "content"};
    char *text[4] = {NULL, NULL, NULL, NULL};
    size_t lens[4];
    kmsg_t *msg = NULL;
    for (int i = 0; i < 4; i++) {
        json_t *part = json_object_get(doc, keys[i]);
        if (!part && i > 0) part = json_object();
        else json_incref(part);
        if (!json_is_object(part)) {
            json_decref(part);
            snprintf(why, why_size, "'%s' must be an object", keys[i]);
            goto done;
        }
        text[i] = jx_dumps(part, false, &lens[i]);
        json_decref(part);
        if (!text[i]) {
            snprintf(why, why_size, "out of memory");
            goto done;
        }
    }
    msg = kmsg_new_raw((const void *const *) text, lens, nbuffers, buffers, buffer_lens);
    if (!msg) snprintf(why, why_size, "out of memory");
done:
    for (int i = 0; i < 4; i++) free(text[i]);
    return msg;
}

static kmsg_t *s_decode_legacy_binary(const unsigned char *data, size_t len,
                                      kchan_type_t *channel, char *why, size_t why_size)
{
    if (len < 4) {
        snprintf(why, why_size, "binary frame shorter than its count");
        return NULL;
    }
    uint32_t n = s_get_be32(data);
    if (n < 1 || n > MAX_OFFSETS || 4 + 4 * (size_t) n > len) {
        snprintf(why, why_size, "binary frame has a bad count (%u)", n);
        return NULL;
    }
    size_t offsets[MAX_OFFSETS + 1];
    for (uint32_t i = 0; i < n; i++) offsets[i] = s_get_be32(data + 4 + 4 * i);
    offsets[n] = len;
    if (offsets[0] != 4 + 4 * (size_t) n) {
        snprintf(why, why_size, "binary frame's first offset is not after the offsets");
        return NULL;
    }
    for (uint32_t i = 1; i <= n; i++)
        if (offsets[i] < offsets[i - 1] || offsets[i] > len) {
            snprintf(why, why_size, "binary frame offsets out of order or out of range");
            return NULL;
        }
    json_error_t jerr;
    json_t *doc = jx_loadb((const char *) data + offsets[0], offsets[1] - offsets[0], &jerr);
    if (!doc) {
        snprintf(why, why_size, "malformed JSON: %s", jerr.text);
        return NULL;
    }
    const void *buffers[MAX_OFFSETS];
    size_t buffer_lens[MAX_OFFSETS];
    for (uint32_t i = 1; i < n; i++) {
        buffers[i - 1] = data + offsets[i];
        buffer_lens[i - 1] = offsets[i + 1] - offsets[i];
    }
    kmsg_t *msg = s_from_json(doc, n - 1, buffers, buffer_lens, channel, why, why_size);
    json_decref(doc);
    return msg;
}

kmsg_t *wsframing_decode(wsframing_proto_t proto, const char *data, size_t len, bool binary,
                     kchan_type_t *channel, char *why, size_t why_size)
{
    if (proto == WSFRAMING_V1) {
        if (!binary) {
            snprintf(why, why_size, "text frame on the v1 protocol (every frame is binary)");
            return NULL;
        }
        return s_decode_v1((const unsigned char *) data, len, channel, why, why_size);
    }
    if (binary) return s_decode_legacy_binary((const unsigned char *) data, len, channel, why, why_size);
    json_error_t jerr;
    json_t *doc = jx_loadb(data, len, &jerr);
    if (!doc) {
        snprintf(why, why_size, "malformed JSON: %s", jerr.text);
        return NULL;
    }
    kmsg_t *msg = s_from_json(doc, 0, NULL, NULL, channel, why, why_size);
    json_decref(doc);
    return msg;
}

static char *s_encode_v1(kchan_type_t channel, kmsg_t *msg, size_t *out_len)
{
    const char *name = kchan_type_name(channel);
    size_t nbuf = kmsg_buffer_count(msg);
    size_t n = 6 + nbuf;
    const char *parts[4];
    size_t lens[4];
    //  The bytes go to the client as they are: header and parent must be whole JSON
    //  objects (kmsg_decode only scanned their top level).
    if (!json_is_object(kmsg_header(msg)) || !json_is_object(kmsg_parent(msg))) return NULL;
    for (int i = 0; i < 4; i++)
        if (!(parts[i] = kmsg_raw(msg, (kmsg_part_t) i, &lens[i]))) return NULL;
    size_t total = 8 + 8 * n + strlen(name);
    for (int i = 0; i < 4; i++) total += lens[i];
    for (size_t i = 0; i < nbuf; i++) {
        size_t blen;
        kmsg_buffer(msg, i, &blen);
        total += blen;
    }
    char *buf = wbuf_alloc(total);
    if (!buf) return NULL;
    unsigned char *p = (unsigned char *) buf;
    s_put_le64(p, n);
    size_t at = 8 + 8 * n, k = 0;
    s_put_le64(p + 8 + 8 * k++, at);
    memcpy(p + at, name, strlen(name));
    at += strlen(name);
    for (int i = 0; i < 4; i++) {
        s_put_le64(p + 8 + 8 * k++, at);
        memcpy(p + at, parts[i], lens[i]);
        at += lens[i];
    }
    for (size_t i = 0; i < nbuf; i++) {
        size_t blen;
        const void *b = kmsg_buffer(msg, i, &blen);
        s_put_le64(p + 8 + 8 * k++, at);
        memcpy(p + at, b, blen);
        at += blen;
    }
    s_put_le64(p + 8 + 8 * k, at);
    *out_len = total;
    return buf;
}

//  Legacy: splice the raw parts into one JSON object rather than parse and re-dump them.
static char *s_encode_legacy(kchan_type_t channel, kmsg_t *msg, size_t *out_len, bool *binary)
{
    const char *parts[4];
    size_t lens[4];
    //  The bytes go to the client as they are: header and parent must be whole JSON
    //  objects (kmsg_decode only scanned their top level).
    if (!json_is_object(kmsg_header(msg)) || !json_is_object(kmsg_parent(msg))) return NULL;
    for (int i = 0; i < 4; i++)
        if (!(parts[i] = kmsg_raw(msg, (kmsg_part_t) i, &lens[i]))) return NULL;
    json_t *id = json_string(kmsg_id(msg) ? kmsg_id(msg) : "");
    json_t *type = json_string(kmsg_type(msg) ? kmsg_type(msg) : "");
    char *id_lit = jx_dumps(id, false, NULL), *type_lit = jx_dumps(type, false, NULL);
    json_decref(id);
    json_decref(type);
    size_t nbuf = kmsg_buffer_count(msg);
    *binary = nbuf > 0;
    char *json = NULL;
    int n = -1;
    if (id_lit && type_lit)
        n = asprintf(&json,
                     "{\"header\":%.*s,\"msg_id\":%s,\"msg_type\":%s,\"parent_header\":%.*s,"
                     "\"metadata\":%.*s,\"content\":%.*s,%s\"channel\":\"%s\"}",
                     (int) lens[0], parts[0], id_lit, type_lit, (int) lens[1], parts[1],
                     (int) lens[2], parts[2], (int) lens[3], parts[3],
                     *binary ? "" : "\"buffers\":[],", kchan_type_name(channel));
    free(id_lit);
    free(type_lit);
    if (n < 0) return NULL;
    size_t jlen = (size_t) n, total = jlen;
    if (*binary) {
        total += 4 + 4 * (nbuf + 1);
        for (size_t i = 0; i < nbuf; i++) {
            size_t blen;
            kmsg_buffer(msg, i, &blen);
            total += blen;
        }
    }
    char *buf = wbuf_alloc(total);
    if (!buf) {
        free(json);
        return NULL;
    }
    unsigned char *p = (unsigned char *) buf;
    size_t at = 0;
    if (*binary) {
        s_put_be32(p, (uint32_t) (nbuf + 1));
        at = 4 + 4 * (nbuf + 1);
        s_put_be32(p + 4, (uint32_t) at);
        memcpy(p + at, json, jlen);
        at += jlen;
        for (size_t i = 0; i < nbuf; i++) {
            size_t blen;
            const void *b = kmsg_buffer(msg, i, &blen);
            s_put_be32(p + 8 + 4 * i, (uint32_t) at);
            memcpy(p + at, b, blen);
            at += blen;
        }
    } else {
        memcpy(p, json, jlen);
    }
    free(json);
    *out_len = total;
    return buf;
}

char *wsframing_encode(wsframing_proto_t proto, kchan_type_t channel, kmsg_t *msg, size_t *len,
                   bool *binary)
{
    if (proto == WSFRAMING_V1) {
        *binary = true;
        return s_encode_v1(channel, msg, len);
    }
    return s_encode_legacy(channel, msg, len, binary);
}
