/*  wsframing - the Jupyter kernel WebSocket framings, both ways.

    v1 ("v1.kernel.websocket.jupyter.org"): every frame binary; u64 little-endian
    offset count, then the offsets (the last is the frame length), then channel, header,
    parent_header, metadata, content and buffers, byte for byte as on ZeroMQ.

    legacy (no subprotocol): a text frame with the whole message as one JSON object plus
    "channel"; or, when there are buffers, a binary frame: u32 big-endian count, u32
    big-endian offsets, the JSON (without "buffers"), then the buffers.

    Decoding never trusts the client: counts, offsets and the channel name are checked
    before anything is copied, and a failure comes with a reason for the close frame.
*/
#ifndef WSFRAMING_H
#define WSFRAMING_H

#include "../../kernelmgr/kmsg.h"
#include "../../kernelmgr/kchan.h"

#include <stdbool.h>
#include <stddef.h>

typedef enum { WSFRAMING_LEGACY = 0, WSFRAMING_V1 = 1 } wsframing_proto_t;

//  Decode a client frame. Returns the message and sets *channel, or NULL with a reason
//  in why (a frame that is malformed, or names a channel that is not shell, control or
//  stdin). Caller owns return value.
kmsg_t *wsframing_decode(wsframing_proto_t proto, const char *data, size_t len, bool binary,
                     kchan_type_t *channel, char *why, size_t why_size);

//  Encode a message from the kernel for a client: a wire buffer (wbuf.h), its length,
//  and whether it is a binary frame. NULL on failure.
//  Caller owns return value (wsconn_send_buf or wbuf_free).
char *wsframing_encode(wsframing_proto_t proto, kchan_type_t channel, kmsg_t *msg, size_t *len,
                   bool *binary);

#endif
