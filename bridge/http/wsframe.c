/*  wsframe - WebSocket frame parsing and headers. */
#include "wsframe.h"

#include <string.h>

enum { S_HEAD, S_PAYLOAD };

void wsframe_init(wsframe_t *self)
{
    memset(self, 0, sizeof *self);
    self->state_ = S_HEAD;
    self->hneed_ = 2;
}

static long s_fail(wsframe_t *self, int code, const char *why)
{
    self->failed = true;
    self->close_code = code;
    self->why = why;
    return -1;
}

//  The header is complete in hdr_: check it and set up the payload.
static int s_begin_frame(wsframe_t *self)
{
    uint8_t b0 = self->hdr_[0], b1 = self->hdr_[1];
    self->fin_ = (b0 & 0x80) != 0;
    self->opcode_ = b0 & 0x0f;
    size_t at = 2;
    uint64_t len = b1 & 0x7f;
    if (len == 126) {
        len = ((uint64_t) self->hdr_[2] << 8) | self->hdr_[3];
        at = 4;
    } else if (len == 127) {
        len = 0;
        for (int i = 0; i < 8; i++) len = (len << 8) | self->hdr_[2 + i];
        if (len >> 63) return -1;
        at = 10;
    }
    memcpy(self->mask_, self->hdr_ + at, 4);
    self->left_ = len;
    self->mpos_ = 0;
    return 0;
}

//  Bytes the header needs in total, once its first two bytes are known; also the
//  checks that need no more than those two bytes.
static long s_header_need(wsframe_t *self)
{
    uint8_t b0 = self->hdr_[0], b1 = self->hdr_[1];
    if (b0 & 0x70) return s_fail(self, 1002, "reserved bits set (no extension was negotiated)");
    int op = b0 & 0x0f;
    bool fin = (b0 & 0x80) != 0;
    if (!(b1 & 0x80)) return s_fail(self, 1002, "client frames must be masked");
    uint64_t len7 = b1 & 0x7f;
    if (op >= 0x8) {
        if (op > WS_OP_PONG) return s_fail(self, 1002, "unknown opcode");
        if (!fin) return s_fail(self, 1002, "control frames cannot be fragmented");
        if (len7 > 125) return s_fail(self, 1002, "control frame longer than 125 bytes");
    } else if (op == WS_OP_CONT) {
        if (!self->in_message_) return s_fail(self, 1002, "continuation frame outside a message");
    } else if (op == WS_OP_TEXT || op == WS_OP_BINARY) {
        if (self->in_message_) return s_fail(self, 1002, "new message inside a fragmented one");
    } else {
        return s_fail(self, 1002, "unknown opcode");
    }
    return (long) (2 + (len7 == 126 ? 2 : len7 == 127 ? 8 : 0) + 4);
}

long wsframe_feed(wsframe_t *self, char *in, size_t len, const wsframe_events_t *events, void *arg)
{
    if (self->failed) return -1;
    size_t i = 0;
    while (i < len) {
        if (self->state_ == S_HEAD) {
            size_t n = self->hneed_ - self->hlen_;
            if (n > len - i) n = len - i;
            memcpy(self->hdr_ + self->hlen_, in + i, n);
            self->hlen_ += n;
            i += n;
            if (self->hlen_ < self->hneed_) continue;
            if (self->hneed_ == 2) {
                long need = s_header_need(self);
                if (need < 0) return -1;
                self->hneed_ = (size_t) need;
                if (self->hlen_ < self->hneed_) continue;
            }
            if (s_begin_frame(self) != 0) return s_fail(self, 1002, "frame length out of range");
            self->hlen_ = 0;
            self->hneed_ = 2;
            self->state_ = S_PAYLOAD;
            self->ctl_len_ = 0;
            if (self->opcode_ == WS_OP_TEXT || self->opcode_ == WS_OP_BINARY) {
                self->in_message_ = !self->fin_;
                self->msg_opcode_ = self->opcode_;
                self->msg_started_ = false;
            } else if (self->opcode_ == WS_OP_CONT && self->fin_) {
                self->in_message_ = false;
            }
            //  A zero-length frame completes in the payload step just below.
        }
        if (self->state_ == S_PAYLOAD) {
            size_t n = len - i;
            if ((uint64_t) n > self->left_) n = (size_t) self->left_;
            char *p = in + i;
            for (size_t k = 0; k < n; k++) p[k] ^= (char) self->mask_[(self->mpos_ + k) & 3];
            self->mpos_ += n;
            self->left_ -= n;
            i += n;
            bool frame_end = self->left_ == 0;
            if (self->opcode_ >= 0x8) {
                memcpy(self->ctl_ + self->ctl_len_, p, n);
                self->ctl_len_ += n;
                if (frame_end && events->on_control)
                    events->on_control(self->opcode_, self->ctl_, self->ctl_len_, arg);
            } else if (n || frame_end) {
                bool first = !self->msg_started_;
                bool last = frame_end && self->fin_;
                self->msg_started_ = true;
                if (events->on_data)
                    events->on_data(first ? self->msg_opcode_ : WS_OP_CONT, p, n, first, last, arg);
            }
            if (frame_end) self->state_ = S_HEAD;
            if (self->failed) return -1;
        }
    }
    return (long) i;
}

size_t wsframe_header(uint8_t *out, int opcode, bool fin, uint64_t len)
{
    out[0] = (uint8_t) ((fin ? 0x80 : 0) | (opcode & 0x0f));
    if (len < 126) {
        out[1] = (uint8_t) len;
        return 2;
    }
    if (len <= 0xffff) {
        out[1] = 126;
        out[2] = (uint8_t) (len >> 8);
        out[3] = (uint8_t) len;
        return 4;
    }
    out[1] = 127;
    for (int i = 0; i < 8; i++) out[2 + i] = (uint8_t) (len >> (56 - 8 * i));
    return 10;
}

bool wsframe_utf8_valid(const char *data, size_t len)
{
    const unsigned char *s = (const unsigned char *) data;
    size_t i = 0;
    while (i < len) {
        unsigned char c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t n;
        uint32_t cp;
        if (c >= 0xc2 && c <= 0xdf) {
            n = 1;
            cp = c & 0x1f;
        } else if (c >= 0xe0 && c <= 0xef) {
            n = 2;
            cp = c & 0x0f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            n = 3;
            cp = c & 0x07;
        } else {
            return false;
        }
        for (size_t k = 1; k <= n; k++) {
            if (i + k >= len || (s[i + k] & 0xc0) != 0x80) return false;
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        if ((n == 2 && cp < 0x800) || (n == 3 && (cp < 0x10000 || cp > 0x10ffff)) ||
            (cp >= 0xd800 && cp <= 0xdfff))
            return false;
        i += n + 1;
    }
    return true;
}
