/*  wsframe - WebSocket frames (RFC 6455 5): an incremental parser of client frames and the
    header of server frames.

    The parser is strict about what a client must do: every frame masked, no reserved
    bits (no extension is ever negotiated), known opcodes only, control frames final
    and at most 125 bytes, continuation frames only inside a fragmented message and no
    new message inside one. A violation stops it with the close code to send (1002).
    Payload bytes are unmasked in place and handed over as spans of the input; a control
    frame's payload is collected and delivered whole.
*/
#ifndef WSFRAME_H
#define WSFRAME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum {
    WS_OP_CONT = 0x0,
    WS_OP_TEXT = 0x1,
    WS_OP_BINARY = 0x2,
    WS_OP_CLOSE = 0x8,
    WS_OP_PING = 0x9,
    WS_OP_PONG = 0xA
};

typedef struct {
    //  A data frame's payload bytes (possibly in several pieces). first: the first piece of
    //  a new message (opcode is its TEXT or BINARY); last: the last piece of the message.
    void (*on_data)(int opcode, const char *data, size_t len, bool first, bool last, void *arg);
    //  A whole control frame (close, ping, pong); data is at most 125 bytes.
    void (*on_control)(int opcode, const char *data, size_t len, void *arg);
} wsframe_events_t;

typedef struct {
    int state_;
    uint8_t hdr_[14];
    size_t hlen_, hneed_;
    int opcode_;       //  current frame
    bool fin_;
    uint8_t mask_[4];
    uint64_t left_;
    size_t mpos_;
    bool in_message_;  //  inside a fragmented data message
    int msg_opcode_;
    bool msg_started_;
    char ctl_[125];
    size_t ctl_len_;
    bool failed;
    int close_code;    //  after a failure: the code to close with
    const char *why;   //  and why (static text)
} wsframe_t;

void wsframe_init(wsframe_t *self);

//  Parse in[0..len), which is modified (unmasked) in place. Returns the bytes consumed
//  (all of them unless it failed), or -1 with failed, close_code and why set.
long wsframe_feed(wsframe_t *self, char *in, size_t len, const wsframe_events_t *events,
                  void *arg);

//  The header of an unmasked server frame into out (at most 10 bytes). Returns its length.
size_t wsframe_header(uint8_t *out, int opcode, bool fin, uint64_t len);

//  True if data is well-formed UTF-8 (text frames and close reasons must be).
bool wsframe_utf8_valid(const char *data, size_t len);

#endif
