/*  kmsg - Jupyter message model and wire (de)serialization. */
#include "kmsg.h"
#include "jraw.h"
#include "../base/jx.h"
#include "../base/kberr.h"
#include "../base/kutil.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#define DELIMITER "<IDS|MSG>"
#define DELIMITER_LEN 9

struct _kmsg_t {
    //  For each part, raw bytes and/or JSON. When both are present they describe the same
    //  value. Raw bytes of a decoded message point into the received frames (kept in
    //  frames[]) rather than into copies: at megabytes per message, copying is what costs.
    char *raw[4];
    size_t raw_len[4];
    zframe_t *frames[4];
    json_t *json[4];
    bool parse_failed[4];
    zframe_t **buffers;
    size_t nbuffers;
    //  The header fields kbridge routes by, read from a decoded message's raw bytes with
    //  the jraw scanner (a jansson parse of header and parent was ~40% of the bridge's
    //  CPU per cell). Strings live in arena; when they do not fit, the accessors fall back
    //  to parsing. Messages built here or from a client's raw parts have none of this.
    bool have_fields, have_parent_fields;
    const char *f_type, *f_id, *f_session, *f_date, *f_parent_id, *f_parent_date;
    size_t arena_used;
    char arena[384];
};

static char *s_copy_bytes(const void *data, size_t len);
static int s_scan_fields(kmsg_t *self);

static kmsg_t *s_alloc(void)
{
    return calloc(1, sizeof(kmsg_t));
}

//  The current time as kmsg dates are written; the formatted second is kept, so a burst
//  of messages costs a clock read and six digits each.
static void s_date(char out[32])
{
    static time_t cached_sec = -1;
    static char cached[24];
    static size_t cached_len;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (ts.tv_sec != cached_sec) {
        struct tm tm;
        gmtime_r(&ts.tv_sec, &tm);
        cached_len = strftime(cached, sizeof cached, "%Y-%m-%dT%H:%M:%S", &tm);
        cached_sec = ts.tv_sec;
    }
    memcpy(out, cached, cached_len);
    snprintf(out + cached_len, 32 - cached_len, ".%06dZ", (int) (ts.tv_nsec / 1000) % 1000000);
}

//  True if s can go into a JSON string as it is.
static bool s_plain(const char *s, size_t max)
{
    size_t n = 0;
    for (; s[n]; n++)
        if (n >= max || (unsigned char) s[n] < 0x20 || s[n] == '"' || s[n] == '\\' ||
            (unsigned char) s[n] >= 0x80)
            return false;
    return true;
}

//  content (stolen) or, when text is given, the serialized content (copied).
static kmsg_t *s_new(const char *msg_type, const char *session, const char *msg_id,
                     json_t *content, const char *text, size_t text_len)
{
    kmsg_t *self = s_alloc();
    if (!self) {
        json_decref(content);
        return NULL;
    }
    static unsigned long long counter;
    char id[160], date[32];
    if (!session) session = "";
    if (msg_id) snprintf(id, sizeof id, "%s", msg_id);
    else if (s_plain(session, 100)) snprintf(id, sizeof id, "%s_%llu", session, ++counter);
    else kb_uuid4(id);
    s_date(date);
    if (text) {
        self->raw[KMSG_CONTENT] = s_copy_bytes(text, text_len);
        self->raw_len[KMSG_CONTENT] = text_len;
        if (!self->raw[KMSG_CONTENT]) {
            kmsg_destroy(&self);
            return NULL;
        }
    } else {
        self->json[KMSG_CONTENT] = content ? content : json_object();
    }
    //  The header is written from a template: no jansson object to build and dump for the
    //  requests kbridge sends once per cell and more.
    if (s_plain(session, 100) && s_plain(id, 150) && s_plain(msg_type, 64)) {
        char header[512];
        int n = snprintf(header, sizeof header,
                         "{\"msg_id\":\"%s\",\"username\":\"kbridge\",\"session\":\"%s\","
                         "\"date\":\"%s\",\"msg_type\":\"%s\",\"version\":\"" KMSG_PROTOCOL_VERSION "\"}",
                         id, session, date, msg_type);
        self->raw[KMSG_HEADER] = n > 0 ? s_copy_bytes(header, (size_t) n) : NULL;
        self->raw_len[KMSG_HEADER] = n > 0 ? (size_t) n : 0;
        self->raw[KMSG_PARENT] = s_copy_bytes("{}", 2);
        self->raw_len[KMSG_PARENT] = 2;
        self->raw[KMSG_METADATA] = s_copy_bytes("{}", 2);
        self->raw_len[KMSG_METADATA] = 2;
        if (!self->raw[KMSG_HEADER] || !self->raw[KMSG_PARENT] || !self->raw[KMSG_METADATA] ||
            (!self->json[KMSG_CONTENT] && !self->raw[KMSG_CONTENT])) {
            kmsg_destroy(&self);
            return NULL;
        }
        s_scan_fields(self);  //  fields that do not fit are parsed when asked for
        return self;
    }
    self->json[KMSG_HEADER] = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s}", "msg_id", id,
                                        "username", "kbridge", "session", session,
                                        "date", date, "msg_type", msg_type, "version",
                                        KMSG_PROTOCOL_VERSION);
    self->json[KMSG_PARENT] = json_object();
    self->json[KMSG_METADATA] = json_object();
    if (!self->json[KMSG_HEADER] || !self->json[KMSG_PARENT] || !self->json[KMSG_METADATA] ||
        (!self->json[KMSG_CONTENT] && !self->raw[KMSG_CONTENT])) {
        kmsg_destroy(&self);
        return NULL;
    }
    return self;
}

kmsg_t *kmsg_new_id(const char *msg_type, const char *session, const char *msg_id,
                    json_t *content)
{
    return s_new(msg_type, session, msg_id, content, NULL, 0);
}

kmsg_t *kmsg_new(const char *msg_type, const char *session, json_t *content)
{
    return s_new(msg_type, session, NULL, content, NULL, 0);
}

kmsg_t *kmsg_new_text(const char *msg_type, const char *session, const char *content, size_t len)
{
    return s_new(msg_type, session, NULL, NULL, content, len);
}

static char *s_copy_bytes(const void *data, size_t len)
{
    char *copy = malloc(len + 1);
    if (!copy) return NULL;
    if (len) memcpy(copy, data, len);
    copy[len] = '\0';
    return copy;
}

static int s_set_buffers(kmsg_t *self, size_t nbuffers, const void *const *buffers,
                         const size_t *lens)
{
    if (!nbuffers) return KB_OK;
    self->buffers = calloc(nbuffers, sizeof(zframe_t *));
    if (!self->buffers) return KB_ENOMEM;
    self->nbuffers = nbuffers;
    for (size_t i = 0; i < nbuffers; i++) {
        self->buffers[i] = zframe_new(buffers[i], lens[i]);
        if (!self->buffers[i]) return KB_ENOMEM;
    }
    return KB_OK;
}

kmsg_t *kmsg_new_raw(const void *const parts[4], const size_t lens[4], size_t nbuffers,
                     const void *const *buffers, const size_t *buffer_lens)
{
    kmsg_t *self = s_alloc();
    if (!self) return NULL;
    for (int i = 0; i < 4; i++) {
        self->raw[i] = s_copy_bytes(parts[i], lens[i]);
        self->raw_len[i] = lens[i];
        if (!self->raw[i]) {
            kmsg_destroy(&self);
            return NULL;
        }
    }
    if (s_set_buffers(self, nbuffers, buffers, buffer_lens)) kmsg_destroy(&self);
    return self;
}

void kmsg_destroy(kmsg_t **self_p)
{
    if (!self_p || !*self_p) return;
    kmsg_t *self = *self_p;
    for (int i = 0; i < 4; i++) {
        if (self->frames[i]) zframe_destroy(&self->frames[i]);
        else free(self->raw[i]);
        json_decref(self->json[i]);
    }
    for (size_t i = 0; i < self->nbuffers; i++)
        zframe_destroy(&self->buffers[i]);
    free(self->buffers);
    free(self);
    *self_p = NULL;
}

//  Copy the string token v (checked, decoded if it has escapes) into the arena. Returns
//  KB_OK, KB_EPROTO if v is not a valid string, KB_ENOMEM if the arena is full.
static int s_take_str(kmsg_t *self, jraw_t v, const char **out)
{
    if (!jraw_string_valid(v)) return KB_EPROTO;
    const char *src = v.p + 1;
    size_t len = v.len - 2;
    json_t *decoded = NULL;
    if (memchr(src, '\\', len)) {
        decoded = jraw_decode(v);
        if (!json_is_string(decoded)) {
            json_decref(decoded);
            return KB_EPROTO;
        }
        src = json_string_value(decoded);
        len = json_string_length(decoded);
    }
    int rc = KB_OK;
    if (memchr(src, '\0', len)) rc = KB_EPROTO;  //  C strings cannot carry it
    else if (self->arena_used + len + 1 > sizeof self->arena) rc = KB_ENOMEM;
    else {
        char *dst = self->arena + self->arena_used;
        memcpy(dst, src, len);
        dst[len] = '\0';
        self->arena_used += len + 1;
        *out = dst;
    }
    json_decref(decoded);
    return rc;
}

//  Walk the top level of a header object (raw), taking the fields named in keys[] (the
//  last of duplicate keys wins, as in jansson). Returns KB_OK, KB_EPROTO if the text is
//  not an object or a wanted string is malformed, KB_ENOMEM if the arena is full.
static int s_scan(kmsg_t *self, int part, const char *const *keys, const char **fields, int nkeys)
{
    jraw_t obj = {self->raw[part], self->raw_len[part]}, key, value;
    size_t pos = 0, lens[8];
    int rc;
    for (int i = 0; i < nkeys; i++) lens[i] = strlen(keys[i]);
    while ((rc = jraw_next(obj, &pos, &key, &value)) == 1) {
        //  Plain keys (all of them in practice) are compared by length and bytes; only a
        //  key with an escape goes through jraw_key_is's decode.
        bool escaped = memchr(key.p + 1, '\\', key.len - 2) != NULL;
        for (int i = 0; i < nkeys; i++)
            if (escaped ? jraw_key_is(key, keys[i])
                        : key.len == lens[i] + 2 && memcmp(key.p + 1, keys[i], lens[i]) == 0) {
                //  A field that is not a string reads as absent, as with jx_get_str.
                fields[i] = NULL;
                if (jraw_kind(value) != '"') break;
                int taken = s_take_str(self, value, &fields[i]);
                if (taken != KB_OK) return taken;
                break;  //  the wanted keys are distinct
            }
    }
    if (rc < 0) return KB_EPROTO;
    for (size_t i = pos; i < obj.len; i++)
        if (obj.p[i] != ' ' && obj.p[i] != '\t' && obj.p[i] != '\r' && obj.p[i] != '\n')
            return KB_EPROTO;  //  text after the object
    return KB_OK;
}

//  The routing fields of a verified message, without a JSON parse. KB_OK with the fields
//  set, KB_EPROTO for a malformed header or parent, KB_ENOMEM when they did not fit (the
//  caller then parses as before).
static int s_scan_fields(kmsg_t *self)
{
    static const char *const hkeys[] = {"msg_type", "msg_id", "session", "date"};
    static const char *const pkeys[] = {"msg_id", "date"};
    const char *h[4] = {NULL, NULL, NULL, NULL}, *p[2] = {NULL, NULL};
    int rc = s_scan(self, KMSG_HEADER, hkeys, h, 4);
    if (rc == KB_OK) rc = s_scan(self, KMSG_PARENT, pkeys, p, 2);
    if (rc != KB_OK) {
        self->arena_used = 0;
        return rc;
    }
    if (!h[0] || !h[1]) return KB_EPROTO;  //  msg_type and msg_id are required
    self->f_type = h[0];
    self->f_id = h[1];
    self->f_session = h[2];
    self->f_date = h[3];
    self->f_parent_id = p[0];
    self->f_parent_date = p[1];
    self->have_fields = self->have_parent_fields = true;
    return KB_OK;
}

kmsg_t *kmsg_decode_frames(zframe_t **frames, size_t n, hmac_t *hmac, int *err)
{
    int dummy;
    if (!err) err = &dummy;
    *err = KB_EPROTO;
    //  Skip identities/topic up to the first delimiter; never assume how many there are.
    size_t d = 0;
    while (d < n && !(zframe_size(frames[d]) == DELIMITER_LEN &&
                      memcmp(zframe_data(frames[d]), DELIMITER, DELIMITER_LEN) == 0))
        d++;
    if (d + 6 > n) return NULL;  //  delimiter, signature and the four parts
    zframe_t *sig = frames[d + 1], **parts = frames + d + 2;
    const void *bytes[4];
    size_t lens[4];
    for (int i = 0; i < 4; i++) {
        bytes[i] = zframe_data(parts[i]);
        lens[i] = zframe_size(parts[i]);
    }
    if (hmac_verify(hmac, zframe_data(sig), zframe_size(sig), bytes, lens, 1) != KB_OK) {
        *err = KB_EAUTH;
        return NULL;
    }

    //  Verified: only now is anything parsed.
    kmsg_t *self = s_alloc();
    if (!self) {
        *err = KB_ENOMEM;
        return NULL;
    }
    //  Buffers are the frames after the four parts.
    size_t nbuffers = n - (d + 6);
    if (nbuffers) {
        self->buffers = calloc(nbuffers, sizeof(zframe_t *));
        if (!self->buffers) {
            *err = KB_ENOMEM;
            kmsg_destroy(&self);
            return NULL;
        }
        for (size_t i = 0; i < nbuffers; i++) {
            self->buffers[i] = frames[d + 6 + i];
            frames[d + 6 + i] = NULL;
        }
        self->nbuffers = nbuffers;
    }
    for (int i = 0; i < 4; i++) {
        self->frames[i] = parts[i];
        parts[i] = NULL;
        self->raw[i] = (char *) bytes[i];
        self->raw_len[i] = lens[i];
    }
    int scanned = s_scan_fields(self);
    if (scanned == KB_EPROTO) goto fail;
    if (scanned != KB_OK) {
        json_t *header = kmsg_header(self), *parent = kmsg_parent(self);
        if (!json_is_object(header) || !json_is_object(parent)) goto fail;
        const char *s;
        if (jx_get_str(header, "msg_id", &s, false) || jx_get_str(header, "msg_type", &s, false))
            goto fail;
    }
    *err = KB_OK;
    return self;
fail:
    kmsg_destroy(&self);
    return NULL;
}

kmsg_t *kmsg_decode(zmsg_t **zmsg_p, hmac_t *hmac, int *err)
{
    zmsg_t *zmsg = *zmsg_p;
    *zmsg_p = NULL;
    int dummy;
    if (!err) err = &dummy;
    *err = KB_EPROTO;
    if (!zmsg) return NULL;
    size_t n = zmsg_size(zmsg);
    zframe_t **frames = calloc(n ? n : 1, sizeof *frames);
    if (!frames) {
        *err = KB_ENOMEM;
        zmsg_destroy(&zmsg);
        return NULL;
    }
    for (size_t i = 0; i < n; i++) frames[i] = zmsg_pop(zmsg);
    zmsg_destroy(&zmsg);
    kmsg_t *self = kmsg_decode_frames(frames, n, hmac, err);
    for (size_t i = 0; i < n; i++) zframe_destroy(&frames[i]);
    free(frames);
    return self;
}

static int s_serialize(kmsg_t *self, int part)
{
    if (self->raw[part]) return KB_OK;
    if (!self->json[part]) return KB_EINVAL;
    self->raw[part] = jx_dumps(self->json[part], false, &self->raw_len[part]);
    return self->raw[part] ? KB_OK : KB_ENOMEM;
}

zmsg_t *kmsg_encode(kmsg_t **self_p, hmac_t *hmac)
{
    kmsg_t *self = *self_p;
    *self_p = NULL;
    zmsg_t *zmsg = NULL;
    if (!self) return NULL;
    const void *bytes[4];
    size_t lens[4];
    for (int i = 0; i < 4; i++) {
        if (s_serialize(self, i)) goto done;
        bytes[i] = self->raw[i];
        lens[i] = self->raw_len[i];
    }
    char sig[HMAC_HEX_MAX + 1];
    size_t siglen = hmac_sign(hmac, bytes, lens, sig);
    zmsg = zmsg_new();
    if (!zmsg) goto done;
    if (zmsg_addmem(zmsg, DELIMITER, DELIMITER_LEN) || zmsg_addmem(zmsg, sig, siglen))
        goto fail;
    for (int i = 0; i < 4; i++)
        if (zmsg_addmem(zmsg, self->raw[i], self->raw_len[i])) goto fail;
    for (size_t i = 0; i < self->nbuffers; i++)
        if (zmsg_append(zmsg, &self->buffers[i])) goto fail;
    goto done;
fail:
    zmsg_destroy(&zmsg);
done:
    kmsg_destroy(&self);
    return zmsg;
}

static void s_drop_raw(kmsg_t *self, int part)
{
    if (self->frames[part]) zframe_destroy(&self->frames[part]);
    else free(self->raw[part]);
    self->raw[part] = NULL;
}

void kmsg_set_parent(kmsg_t *self, json_t *parent)
{
    self->have_parent_fields = false;
    json_decref(self->json[KMSG_PARENT]);
    s_drop_raw(self, KMSG_PARENT);
    self->json[KMSG_PARENT] = parent ? json_deep_copy(parent) : json_object();
}

void kmsg_set_metadata(kmsg_t *self, json_t *metadata)
{
    json_decref(self->json[KMSG_METADATA]);
    s_drop_raw(self, KMSG_METADATA);
    self->json[KMSG_METADATA] = metadata ? metadata : json_object();
}

static json_t *s_part(kmsg_t *self, int part)
{
    if (!self->json[part] && !self->parse_failed[part] && self->raw[part]) {
        self->json[part] = jx_loadb(self->raw[part], self->raw_len[part], NULL);
        if (!self->json[part]) self->parse_failed[part] = true;
    }
    return self->json[part];
}

json_t *kmsg_header(kmsg_t *self)
{
    return s_part(self, KMSG_HEADER);
}

json_t *kmsg_parent(kmsg_t *self)
{
    return s_part(self, KMSG_PARENT);
}

json_t *kmsg_metadata(kmsg_t *self)
{
    return s_part(self, KMSG_METADATA);
}

json_t *kmsg_content(kmsg_t *self)
{
    return s_part(self, KMSG_CONTENT);
}

//  A routing field read from the parsed header (or parent): for messages whose fields were
//  not scanned at decode (built here rather than received).
static const char *s_field(kmsg_t *self, bool parent, const char *key)
{
    const char *s = NULL;
    jx_get_str(parent ? kmsg_parent(self) : kmsg_header(self), key, &s, true);
    return s;
}

const char *kmsg_type(kmsg_t *self)
{
    return self->have_fields ? self->f_type : s_field(self, false, "msg_type");
}

const char *kmsg_id(kmsg_t *self)
{
    return self->have_fields ? self->f_id : s_field(self, false, "msg_id");
}

const char *kmsg_session(kmsg_t *self)
{
    return self->have_fields ? self->f_session : s_field(self, false, "session");
}

const char *kmsg_date(kmsg_t *self)
{
    return self->have_fields ? self->f_date : s_field(self, false, "date");
}

const char *kmsg_parent_id(kmsg_t *self)
{
    return self->have_parent_fields ? self->f_parent_id : s_field(self, true, "msg_id");
}

const char *kmsg_parent_date(kmsg_t *self)
{
    return self->have_parent_fields ? self->f_parent_date : s_field(self, true, "date");
}

const char *kmsg_raw(kmsg_t *self, kmsg_part_t part, size_t *len)
{
    if (s_serialize(self, part)) return NULL;
    if (len) *len = self->raw_len[part];
    return self->raw[part];
}

int kmsg_content_member(kmsg_t *self, const char *key, jraw_t *value)
{
    jraw_t content;
    content.p = kmsg_raw(self, KMSG_CONTENT, &content.len);
    //  Content that is not JSON for jansson (jx_loadb) is not JSON here either.
    if (!content.p || memchr(content.p, '\0', content.len)) return KB_EPROTO;
    return jraw_member_last(content, key, value);
}

size_t kmsg_buffer_count(const kmsg_t *self)
{
    return self->nbuffers;
}

const void *kmsg_buffer(const kmsg_t *self, size_t index, size_t *len)
{
    if (index >= self->nbuffers) return NULL;
    if (len) *len = zframe_size(self->buffers[index]);
    return zframe_data(self->buffers[index]);
}
