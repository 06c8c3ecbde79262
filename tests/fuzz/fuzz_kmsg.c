/*  libFuzzer target: multipart messages from a kernel socket.

    The input is split into frames on 0xFF bytes. Half the inputs are decoded with an
    unsigned (empty-key) signer, so the parser behind the signature check is reached; the
    other half with a real key, exercising the verification path (length, compare, replay).
*/
#include "kernelmgr/kmsg.h"
#include "base/kberr.h"

#include <stdint.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static hmac_t *unsigned_, *keyed;
    if (!unsigned_) {
        unsigned_ = hmac_new("hmac-sha256", "", 0, NULL);
        keyed = hmac_new("hmac-sha256", "fuzz-key", 8, NULL);
    }
    if (size < 1) return 0;
    zmsg_t *zmsg = zmsg_new();
    size_t start = 1;
    for (size_t i = 1; i <= size; i++)
        if (i == size || data[i] == 0xFF) {
            zmsg_addmem(zmsg, data + start, i - start);
            start = i + 1;
        }
    int err;
    kmsg_t *msg = kmsg_decode(&zmsg, data[0] & 1 ? keyed : unsigned_, &err);
    if (msg) {
        //  The fields scanned from the raw header must be what jansson reads there.
        static const char *const keys[] = {"msg_type", "msg_id", "session", "date"};
        const char *scanned[] = {kmsg_type(msg), kmsg_id(msg), kmsg_session(msg), kmsg_date(msg)};
        json_t *header = json_deep_copy(kmsg_header(msg));
        for (int i = 0; header && i < 4; i++) {
            const char *parsed = json_string_value(json_object_get(header, keys[i]));
            if (parsed && strlen(parsed) == json_string_length(json_object_get(header, keys[i])) &&
                (!scanned[i] || strcmp(parsed, scanned[i]) != 0))
                __builtin_trap();
            if (!parsed && scanned[i]) __builtin_trap();
        }
        json_decref(header);
        json_t *parent = kmsg_parent(msg);
        const char *pid = json_string_value(json_object_get(parent, "msg_id"));
        if (parent && pid && (!kmsg_parent_id(msg) || strcmp(pid, kmsg_parent_id(msg)) != 0))
            __builtin_trap();
        //  The content fields read without a parse (status, reply) must be what jansson
        //  reads wherever jansson accepts the content.
        json_t *content = kmsg_content(msg);
        static const char *const ckeys[] = {"execution_state", "status", "execution_count"};
        for (int i = 0; json_is_object(content) && i < 3; i++) {
            json_t *want = json_object_get(content, ckeys[i]);
            jraw_t got;
            int rc = kmsg_content_member(msg, ckeys[i], &got);
            if (rc != (want ? 0 : KB_ENOTFOUND)) __builtin_trap();
            if (json_is_string(want) && strlen(json_string_value(want)) == json_string_length(want) &&
                !jraw_string_is(got, json_string_value(want)))
                __builtin_trap();
            if (!json_is_string(want) && want && jraw_string_is(got, ""))
                __builtin_trap();
            int64_t n;
            int irc = want ? jraw_int(got, &n) : KB_EPROTO;
            if (json_is_integer(want) != (irc == 0)) __builtin_trap();
            if (json_is_integer(want) && n != (int64_t) json_integer_value(want)) __builtin_trap();
        }
        kmsg_type(msg);
        kmsg_parent_id(msg);
        kmsg_metadata(msg);
        zmsg_t *again = kmsg_encode(&msg, unsigned_);
        zmsg_destroy(&again);
    }
    return 0;
}
