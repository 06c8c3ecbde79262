/*  hresp - one upstream response, delimited as it passes through. */
#include "hresp.h"
#include "hchunk.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { S_IDLE, S_HEAD, S_BODY, S_DONE, S_FAILED };

struct _hresp_t {
    size_t max_head;
    int state;
    char method[16];
    size_t scanned;  //  how far the incomplete head was looked at already
    hhead_t head;
    bool interim;
    hbody_t framing;
    uint64_t left;   //  HBODY_LENGTH: body bytes still to come
    hchunk_t chunk;
    const char *why;
};

hresp_t *hresp_new(size_t max_head)
{
    hresp_t *self = calloc(1, sizeof *self);
    if (!self) return NULL;
    self->max_head = max_head;
    return self;
}

void hresp_destroy(hresp_t **self_p)
{
    if (!self_p || !*self_p) return;
    hresp_t *self = *self_p;
    *self_p = NULL;
    hparse_free(&self->head);
    free(self);
}

void hresp_start(hresp_t *self, const char *method)
{
    hparse_free(&self->head);
    self->state = S_HEAD;
    snprintf(self->method, sizeof self->method, "%s", method ? method : "GET");
    self->scanned = 0;
    self->interim = false;
    self->framing = HBODY_NONE;
    self->left = 0;
    self->why = NULL;
}

static size_t s_fail(hresp_t *self, const char *why, hresp_event_t *ev)
{
    self->state = S_FAILED;
    self->why = why;
    *ev = HRESP_ERROR;
    return 0;
}

size_t hresp_next(hresp_t *self, const char *data, size_t len, hresp_event_t *ev)
{
    *ev = HRESP_MORE;
    switch (self->state) {
    case S_HEAD: {
        long n = hparse_head_length(data, len, self->max_head, &self->scanned);
        if (n < 0) return s_fail(self, "the response head is too large", ev);
        if (n == 0) return 0;
        hparse_free(&self->head);
        self->scanned = 0;
        char why[128];
        if (hparse_response(data, (size_t) n, &self->head, why, sizeof why) != 0)
            return s_fail(self, "malformed response head", ev);
        //  The reason phrase goes on to the client: a line break in it would let the
        //  server slip in headers (framing ones) that the client reads and we do not.
        for (const char *c = self->head.reason; *c; c++)
            if (((unsigned char) *c < 0x20 && *c != '\t') || *c == 0x7f)
                return s_fail(self, "a control character in the reason phrase", ev);
        int status = self->head.status;
        if (status < 100) return s_fail(self, "malformed status code", ev);
        if (status == 101) return s_fail(self, "101 Switching Protocols without an upgrade", ev);
        self->interim = status / 100 == 1;
        *ev = HRESP_HEAD;
        if (self->interim) return (size_t) n;  //  the final head follows
        if (hparse_response_body(&self->head, self->method, &self->framing, &self->left) != 0)
            return s_fail(self, "malformed Content-Length", ev);
        if (self->framing == HBODY_CHUNKED) hchunk_init(&self->chunk);
        self->state = self->framing == HBODY_NONE ? S_DONE : S_BODY;
        return (size_t) n;
    }
    case S_BODY: {
        if (!len) return 0;
        size_t n = len;
        if (self->framing == HBODY_LENGTH) {
            if ((uint64_t) n > self->left) n = (size_t) self->left;
            self->left -= n;
            if (!self->left) self->state = S_DONE;
        } else if (self->framing == HBODY_CHUNKED) {
            long used = hchunk_feed(&self->chunk, data, len, NULL, NULL);
            if (used < 0) return s_fail(self, self->chunk.why ? self->chunk.why : "bad chunked body", ev);
            n = (size_t) used;
            if (self->chunk.done) self->state = S_DONE;
        }
        *ev = HRESP_BODY;
        return n;
    }
    case S_FAILED: *ev = HRESP_ERROR; return 0;
    default: return 0;  //  idle or done: nothing of this response is left to read
    }
}

const hhead_t *hresp_head(const hresp_t *self)
{
    return &self->head;
}

bool hresp_interim(const hresp_t *self)
{
    return self->interim;
}

hbody_t hresp_framing(const hresp_t *self)
{
    return self->framing;
}

bool hresp_done(const hresp_t *self)
{
    return self->state == S_DONE;
}

bool hresp_eof(hresp_t *self)
{
    if (self->state == S_BODY && self->framing == HBODY_UNTIL_CLOSE) self->state = S_DONE;
    return self->state == S_DONE;
}

const char *hresp_why(const hresp_t *self)
{
    return self->why ? self->why : "";
}
