/*  hchunk - chunked transfer coding, decoded incrementally. */
#include "hchunk.h"

#include <string.h>

//  A size line with its extensions, or one trailer line, may not be longer than this.
#define MAX_LINE 4096
#define MAX_TRAILER_BYTES 16384

enum { S_SIZE, S_EXT, S_SIZE_LF, S_DATA, S_DATA_CR, S_DATA_LF, S_TRAILER, S_TRAILER_LF, S_DONE };

void hchunk_init(hchunk_t *self)
{
    memset(self, 0, sizeof *self);
    self->state_ = S_SIZE;
}

static long s_fail(hchunk_t *self, const char *why)
{
    self->failed = true;
    self->why = why;
    return -1;
}

static int s_hex(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

long hchunk_feed(hchunk_t *self, const char *in, size_t len,
                 void (*on_data)(const char *data, size_t len, void *arg), void *arg)
{
    if (self->failed) return -1;
    size_t i = 0;
    while (i < len && self->state_ != S_DONE) {
        char c = in[i];
        switch (self->state_) {
        case S_SIZE: {
            int h = s_hex(c);
            if (h >= 0) {
                //  15 hex digits already exceed any body kbridge accepts.
                if (++self->digits_ > 15) return s_fail(self, "chunk size too large");
                self->left_ = self->left_ * 16 + (uint64_t) h;
                i++;
            } else if (self->digits_ == 0) {
                return s_fail(self, "chunk size missing");
            } else if (c == ';' || c == ' ' || c == '\t') {
                self->state_ = S_EXT;
                self->line_ = 0;
            } else if (c == '\r') {
                self->state_ = S_SIZE_LF;
                i++;
            } else {
                return s_fail(self, "malformed chunk size");
            }
            break;
        }
        case S_EXT:
            if (c == '\r') {
                self->state_ = S_SIZE_LF;
            } else if (c == '\n' || (unsigned char) c < 0x09) {
                return s_fail(self, "malformed chunk extension");
            } else if (++self->line_ > MAX_LINE) {
                return s_fail(self, "chunk extension too long");
            }
            i++;
            break;
        case S_SIZE_LF:
            if (c != '\n') return s_fail(self, "chunk size line must end in CRLF");
            i++;
            self->digits_ = 0;
            if (self->left_ == 0) {
                self->state_ = S_TRAILER;
                self->line_ = 0;
                self->left_ = 0;  //  reused as the trailer byte count
            } else {
                self->state_ = S_DATA;
            }
            break;
        case S_DATA: {
            size_t n = len - i;
            if ((uint64_t) n > self->left_) n = (size_t) self->left_;
            if (on_data) on_data(in + i, n, arg);
            i += n;
            self->left_ -= n;
            if (self->left_ == 0) self->state_ = S_DATA_CR;
            break;
        }
        case S_DATA_CR:
            if (c != '\r') return s_fail(self, "chunk data must end in CRLF");
            self->state_ = S_DATA_LF;
            i++;
            break;
        case S_DATA_LF:
            if (c != '\n') return s_fail(self, "chunk data must end in CRLF");
            self->state_ = S_SIZE;
            self->left_ = 0;
            i++;
            break;
        case S_TRAILER:
            if (c == '\r') {
                self->state_ = S_TRAILER_LF;
            } else if (c == '\n') {
                return s_fail(self, "trailer lines must end in CRLF");
            } else {
                self->line_++;
                if (self->line_ > MAX_LINE || ++self->left_ > MAX_TRAILER_BYTES)
                    return s_fail(self, "trailer too long");
            }
            i++;
            break;
        case S_TRAILER_LF:
            if (c != '\n') return s_fail(self, "trailer lines must end in CRLF");
            i++;
            if (self->line_ == 0) {
                self->state_ = S_DONE;
                self->done = true;
            } else {
                self->state_ = S_TRAILER;
                self->line_ = 0;
            }
            break;
        default: break;
        }
    }
    return (long) i;
}
