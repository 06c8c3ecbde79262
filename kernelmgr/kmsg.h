/*  kmsg - one Jupyter message: header, parent_header, metadata, content, buffers.

    Each of the four JSON parts is held as raw bytes, as parsed JSON, or both. Messages
    decoded from the wire keep the exact bytes that were signed (so they can be passed
    through to a client unchanged) and parse a part only when it is first asked for.
    Messages built here are serialized once, when first encoded, and the same bytes are
    both signed and sent.

    kmsg_decode() is the only way bytes from a kernel become a kmsg_t, and it verifies the
    signature before any JSON is parsed.
*/
#ifndef KMSG_H
#define KMSG_H

#include "hmac.h"
#include "jraw.h"

#include <czmq.h>
#include <jansson.h>
#include <stdbool.h>

typedef struct _kmsg_t kmsg_t;

typedef enum { KMSG_HEADER = 0, KMSG_PARENT = 1, KMSG_METADATA = 2, KMSG_CONTENT = 3 } kmsg_part_t;

//  The protocol version kbridge speaks, and puts in headers it creates.
#define KMSG_PROTOCOL_VERSION "5.3"

//  Create a message of msg_type in session, with a fresh msg_id and the current date.
//  Its header is written from a template (raw bytes, parsed only if asked for).
//  content is stolen (NULL means {}). parent_header and metadata start as {}.
//  Caller owns return value and must destroy it when done.
kmsg_t *kmsg_new(const char *msg_type, const char *session, json_t *content);
//  The same with the given msg_id (NULL: <session>_<counter>, unique in this process).
//  The header is raw bytes: change it only through this constructor.
kmsg_t *kmsg_new_id(const char *msg_type, const char *session, const char *msg_id,
                    json_t *content);

//  The same with the content as serialized JSON text (len bytes, copied; the caller
//  vouches that it is one valid object): for the requests sent once per cell, which need
//  no jansson object built and dumped.
kmsg_t *kmsg_new_text(const char *msg_type, const char *session, const char *content, size_t len);

//  Create a message from the raw bytes of its four parts and optional buffers, all
//  copied. Nothing is parsed or checked here: this is the pass-through path for clients
//  that hand us serialized parts (the v1 kernel WebSocket protocol).
//  Caller owns return value and must destroy it when done.
kmsg_t *kmsg_new_raw(const void *const parts[4], const size_t lens[4], size_t nbuffers,
                     const void *const *buffers, const size_t *buffer_lens);

//  Destroy the message. Nullifies *self_p.
void kmsg_destroy(kmsg_t **self_p);

//  Decode a multipart message received from a kernel socket. Identity (or topic) frames
//  are skipped up to the first "<IDS|MSG>" delimiter; the signature is then checked
//  with hmac (length first, constant time, replay) before anything is looked at; finally
//  the top level of header and parent_header is scanned (jraw, no full parse): both must
//  be objects, the header carrying string msg_id and msg_type, and the routing fields
//  (type, id, session, date, parent's id and date) are taken from there. Nested values
//  are not validated: code that passes raw header bytes on parses them first. Takes ownership of *zmsg_p and nullifies it.
//  Returns NULL on failure with *err = KB_EPROTO (framing/JSON) or KB_EAUTH (signature).
//  Caller owns return value.
kmsg_t *kmsg_decode(zmsg_t **zmsg_p, hmac_t *hmac, int *err);

//  The same from the frames of a message (zwatch_frames_fn's): the frames the message
//  keeps (parts and buffers) are taken, their entries set to NULL; the caller destroys the
//  rest (identities, delimiter, signature), also on failure.
kmsg_t *kmsg_decode_frames(zframe_t **frames, size_t n, hmac_t *hmac, int *err);

//  Encode for sending on a DEALER: delimiter, signature, the four parts, buffers. Takes
//  ownership of *self_p and nullifies it. Returns NULL if a part cannot be serialized.
//  Caller owns return value.
zmsg_t *kmsg_encode(kmsg_t **self_p, hmac_t *hmac);

//  Replace parent_header with a copy of parent (a header object; borrowed).
void kmsg_set_parent(kmsg_t *self, json_t *parent);
//  Replace metadata (stolen).
void kmsg_set_metadata(kmsg_t *self, json_t *metadata);
//  Borrowed accessors: the returned values live as long as the message.
const char *kmsg_type(kmsg_t *self);
const char *kmsg_id(kmsg_t *self);
//  header.session and header.date, NULL when absent or not strings.
const char *kmsg_session(kmsg_t *self);
const char *kmsg_date(kmsg_t *self);
//  parent_header.msg_id and parent_header.date, or NULL when there is none.
const char *kmsg_parent_id(kmsg_t *self);
const char *kmsg_parent_date(kmsg_t *self);
//  Parsed parts, parsed on first use. NULL if the part is not valid JSON.
json_t *kmsg_header(kmsg_t *self);
json_t *kmsg_parent(kmsg_t *self);
json_t *kmsg_metadata(kmsg_t *self);
json_t *kmsg_content(kmsg_t *self);
//  A top-level member of the content, found in its raw bytes without a JSON parse
//  (jraw_member_last: the whole top level is walked, nested values are not validated).
//  value is borrowed and lives as long as the message. Returns 0, KB_ENOTFOUND, or
//  KB_EPROTO if the content is not an object. For the few small fields kbridge reads of
//  every cell's status and reply messages (a jansson parse of them was 5% of its CPU).
int kmsg_content_member(kmsg_t *self, const char *key, jraw_t *value);
//  The serialized bytes of a part (serialized on first use). NULL on failure.
const char *kmsg_raw(kmsg_t *self, kmsg_part_t part, size_t *len);
size_t kmsg_buffer_count(const kmsg_t *self);
const void *kmsg_buffer(const kmsg_t *self, size_t index, size_t *len);

#endif
