/*  kmsg - Jupyter message model and wire (de)serialization. */
#include "kmsg.h"
#include "../base/jx.h"
#include "../base/kberr.h"
#include "../base/kutil.h"

#include <stdlib.h>
#include <string.h>

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
};

static kmsg_t *s_alloc(void)
{
    return calloc(1, sizeof(kmsg_t));
}

kmsg_t *kmsg_new(const char *msg_type, const char *session, json_t *content)
{
    kmsg_t *self = s_alloc();
    if (!self) {
        json_decref(content);
        return NULL;
    }
    char msg_id[37], date[32];
    kb_uuid4(msg_id);
    kb_now_iso(date);
    self->json[KMSG_HEADER] = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s}", "msg_id", msg_id,
                                        "username", "kbridge", "session", session ? session : "",
                                        "date", date, "msg_type", msg_type, "version",
                                        KMSG_PROTOCOL_VERSION);
    self->json[KMSG_PARENT] = json_object();
    self->json[KMSG_METADATA] = json_object();
    self->json[KMSG_CONTENT] = content ? content : json_object();
    if (!self->json[KMSG_HEADER] || !self->json[KMSG_PARENT] || !self->json[KMSG_METADATA] ||
        !self->json[KMSG_CONTENT]) {
        kmsg_destroy(&self);
        return NULL;
    }
    return self;
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

kmsg_t *kmsg_decode(zmsg_t **zmsg_p, hmac_t *hmac, int *err)
{
    zmsg_t *zmsg = *zmsg_p;
    *zmsg_p = NULL;
    int dummy;
    if (!err) err = &dummy;
    *err = KB_EPROTO;
    kmsg_t *self = NULL;
    if (!zmsg) return NULL;

    //  Skip identities/topic up to the first delimiter; never assume how many there are.
    zframe_t *frame = zmsg_first(zmsg);
    while (frame && !(zframe_size(frame) == DELIMITER_LEN &&
                      memcmp(zframe_data(frame), DELIMITER, DELIMITER_LEN) == 0))
        frame = zmsg_next(zmsg);
    if (!frame) goto fail;
    zframe_t *sig = zmsg_next(zmsg);
    zframe_t *parts[4];
    for (int i = 0; i < 4; i++) {
        parts[i] = zmsg_next(zmsg);
        if (!parts[i]) goto fail;
    }
    if (!sig) goto fail;

    const void *bytes[4];
    size_t lens[4];
    for (int i = 0; i < 4; i++) {
        bytes[i] = zframe_data(parts[i]);
        lens[i] = zframe_size(parts[i]);
    }
    if (hmac_verify(hmac, zframe_data(sig), zframe_size(sig), bytes, lens, 1) != KB_OK) {
        *err = KB_EAUTH;
        goto fail;
    }

    //  Verified: only now is anything parsed.
    self = s_alloc();
    if (!self) {
        *err = KB_ENOMEM;
        goto fail;
    }
    //  Buffers are the frames after the four parts (the list cursor is still at the last
    //  part). Parts and buffers then move out of the message, which is destroyed.
    size_t nbuffers = zmsg_size(zmsg);  //  upper bound
    self->buffers = calloc(nbuffers ? nbuffers : 1, sizeof(zframe_t *));
    if (!self->buffers) {
        *err = KB_ENOMEM;
        goto fail;
    }
    for (zframe_t *buffer = zmsg_next(zmsg); buffer; buffer = zmsg_next(zmsg))
        self->buffers[self->nbuffers++] = buffer;
    for (size_t i = 0; i < self->nbuffers; i++) zmsg_remove(zmsg, self->buffers[i]);
    for (int i = 0; i < 4; i++) {
        zmsg_remove(zmsg, parts[i]);
        self->frames[i] = parts[i];
        self->raw[i] = (char *) zframe_data(parts[i]);
        self->raw_len[i] = lens[i];
    }
    json_t *header = kmsg_header(self), *parent = kmsg_parent(self);
    if (!json_is_object(header) || !json_is_object(parent)) goto fail;
    const char *s;
    if (jx_get_str(header, "msg_id", &s, false) || jx_get_str(header, "msg_type", &s, false))
        goto fail;
    zmsg_destroy(&zmsg);
    *err = KB_OK;
    return self;
fail:
    kmsg_destroy(&self);
    zmsg_destroy(&zmsg);
    return NULL;
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

const char *kmsg_type(kmsg_t *self)
{
    const char *s = NULL;
    jx_get_str(kmsg_header(self), "msg_type", &s, true);
    return s;
}

const char *kmsg_id(kmsg_t *self)
{
    const char *s = NULL;
    jx_get_str(kmsg_header(self), "msg_id", &s, true);
    return s;
}

const char *kmsg_parent_id(kmsg_t *self)
{
    const char *s = NULL;
    jx_get_str(kmsg_parent(self), "msg_id", &s, true);
    return s;
}

const char *kmsg_raw(kmsg_t *self, kmsg_part_t part, size_t *len)
{
    if (s_serialize(self, part)) return NULL;
    if (len) *len = self->raw_len[part];
    return self->raw[part];
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
