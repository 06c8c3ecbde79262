/*  multipart - incremental multipart/form-data reader. */
#include "multipart.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

#define HEAD_MAX (16 * 1024)
#define PREAMBLE_MAX (1024 * 1024)

enum { ST_START, ST_PREAMBLE, ST_AFTER_DELIM, ST_HEAD, ST_DATA, ST_DONE, ST_ERROR };

static int s_fail(multipart_t *mp, const char *why)
{
    mp->state_ = ST_ERROR;
    mp->why = why;
    return MP_ERROR;
}

//  Skip optional whitespace.
static const char *s_ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t')) p++;
    return p;
}

//  Find the parameter name (case-insensitive) in "; a=b; c="d"" and copy its value.
//  Returns true if found. Values in quotes are taken literally up to the closing quote
//  (undici and browsers escape quotes as %22, never with backslashes).
static bool s_param(const char *p, const char *end, const char *name, char *out, size_t size,
                    bool *truncated)
{
    size_t nl = strlen(name);
    *truncated = false;
    while (p < end) {
        //  to the next ';' outside quotes
        while (p < end && *p != ';') {
            if (*p == '"') {
                p++;
                while (p < end && *p != '"') p++;
            }
            if (p < end) p++;
        }
        if (p >= end) return false;
        p = s_ws(p + 1, end);
        const char *k = p;
        while (p < end && *p != '=' && *p != ';' && *p != ' ' && *p != '\t') p++;
        size_t kl = (size_t) (p - k);
        p = s_ws(p, end);
        if (p >= end || *p != '=') continue;
        p = s_ws(p + 1, end);
        const char *v, *vend;
        if (p < end && *p == '"') {
            v = ++p;
            while (p < end && *p != '"') p++;
            vend = p;
            if (p < end) p++;
        } else {
            v = p;
            while (p < end && *p != ';' && *p != ' ' && *p != '\t') p++;
            vend = p;
        }
        if (kl == nl && strncasecmp(k, name, nl) == 0) {
            size_t vl = (size_t) (vend - v);
            if (vl >= size) {
                *truncated = true;
                vl = size - 1;
            }
            memcpy(out, v, vl);
            out[vl] = '\0';
            return true;
        }
    }
    return false;
}

int multipart_init(multipart_t *mp, const char *content_type, const char **why)
{
    memset(mp, 0, sizeof *mp);
    static const char type[] = "multipart/form-data";
    const char *fail = NULL;
    if (!content_type || strncasecmp(content_type, type, sizeof type - 1) != 0 ||
        (content_type[sizeof type - 1] != '\0' && content_type[sizeof type - 1] != ';' &&
         content_type[sizeof type - 1] != ' '))
        fail = "not multipart/form-data";
    char boundary[80];
    bool truncated = false;
    if (!fail) {
        const char *p = content_type + sizeof type - 1;
        if (!s_param(p, p + strlen(p), "boundary", boundary, sizeof boundary, &truncated))
            fail = "multipart/form-data without a boundary";
        else if (truncated || strlen(boundary) > 70)
            fail = "multipart boundary longer than 70 bytes";
        else if (!*boundary)
            fail = "empty multipart boundary";
    }
    if (fail) {
        mp->state_ = ST_ERROR;
        mp->why = fail;
        if (why) *why = fail;
        return -1;
    }
    mp->dlen_ = (size_t) snprintf(mp->delim_, sizeof mp->delim_, "\r\n--%s", boundary);
    mp->state_ = ST_START;
    return 0;
}

//  Decode the three escapes undici and browsers use in filename: %22, %0A, %0D.
static void s_unescape(char *s)
{
    char *w = s;
    for (char *r = s; *r;) {
        if (r[0] == '%' && r[1] && r[2]) {
            char c = 0;
            if (r[1] == '2' && r[2] == '2') c = '"';
            else if (r[1] == '0' && (r[2] == 'A' || r[2] == 'a')) c = '\n';
            else if (r[1] == '0' && (r[2] == 'D' || r[2] == 'd')) c = '\r';
            if (c) {
                *w++ = c;
                r += 3;
                continue;
            }
        }
        *w++ = *r++;
    }
    *w = '\0';
}

//  Parse a part's head (lines without the final blank line).
static int s_parse_head(multipart_t *mp, const char *p, const char *end, mp_out_t *out)
{
    memset(out, 0, sizeof *out);
    bool disposition = false;
    while (p < end) {
        const char *eol = p;
        while (eol + 1 < end && !(eol[0] == '\r' && eol[1] == '\n')) eol++;
        if (eol + 1 >= end) eol = end;
        const char *colon = memchr(p, ':', (size_t) (eol - p));
        if (colon) {
            size_t nl = (size_t) (colon - p);
            const char *v = s_ws(colon + 1, eol);
            const char *vend = eol;
            while (vend > v && (vend[-1] == ' ' || vend[-1] == '\t')) vend--;
            if (nl == 19 && strncasecmp(p, "content-disposition", 19) == 0) {
                if ((size_t) (vend - v) < 9 || strncasecmp(v, "form-data", 9) != 0)
                    return s_fail(mp, "a part's Content-Disposition is not form-data");
                disposition = true;
                bool trunc;
                s_param(v + 9, vend, "name", out->name, sizeof out->name, &trunc);
                if (trunc) return s_fail(mp, "a part's name is too long");
                if (s_param(v + 9, vend, "filename", out->filename, sizeof out->filename, &trunc)) {
                    if (trunc) return s_fail(mp, "a part's filename is too long");
                    out->has_filename = true;
                    s_unescape(out->filename);
                }
            } else if (nl == 12 && strncasecmp(p, "content-type", 12) == 0) {
                size_t vl = (size_t) (vend - v);
                if (vl >= sizeof out->content_type) vl = sizeof out->content_type - 1;
                memcpy(out->content_type, v, vl);
                out->content_type[vl] = '\0';
            }
        } else if (eol > p) {
            return s_fail(mp, "a malformed header line in a part");
        }
        p = eol + 2;
    }
    if (!disposition) return s_fail(mp, "a part without Content-Disposition");
    return 0;
}

//  How many leading bytes of in[0..len) cannot begin the delimiter (the rest might).
static size_t s_safe(const multipart_t *mp, const char *in, size_t len)
{
    size_t keep = mp->dlen_ - 1 < len ? mp->dlen_ - 1 : len;
    //  Only a tail that is a prefix of the delimiter needs keeping.
    for (size_t k = keep; k > 0; k--)
        if (memcmp(in + len - k, mp->delim_, k) == 0) return len - k;
    return len;
}

mp_event_t multipart_next(multipart_t *mp, const char *in, size_t len, bool eof, size_t max_data,
                          size_t *used, mp_out_t *out)
{
    *used = 0;
    if (max_data == 0) max_data = 1;
    switch (mp->state_) {
    case ST_ERROR: return MP_ERROR;
    case ST_DONE:
        *used = len;  //  the epilogue is ignored
        return MP_DONE;
    case ST_START: {
        size_t n = mp->dlen_ - 2;  //  "--boundary" at the very start
        if (len < n) {
            if (memcmp(in, mp->delim_ + 2, len) != 0) {
                mp->state_ = ST_PREAMBLE;
                return multipart_next(mp, in, len, eof, max_data, used, out);
            }
            return eof ? s_fail(mp, "the body ends before the first boundary") : MP_MORE;
        }
        if (memcmp(in, mp->delim_ + 2, n) == 0) {
            *used = n;
            mp->state_ = ST_AFTER_DELIM;
            return MP_MORE;
        }
        mp->state_ = ST_PREAMBLE;
        return multipart_next(mp, in, len, eof, max_data, used, out);
    }
    case ST_PREAMBLE: {
        const char *hit = len >= mp->dlen_ ? memmem(in, len, mp->delim_, mp->dlen_) : NULL;
        size_t skip = hit ? (size_t) (hit - in) + mp->dlen_ : s_safe(mp, in, len);
        mp->preamble_ += hit ? (size_t) (hit - in) : skip;
        if (mp->preamble_ > PREAMBLE_MAX) return s_fail(mp, "no boundary in the first MiB of the body");
        *used = skip;
        if (hit) mp->state_ = ST_AFTER_DELIM;
        else if (eof) return s_fail(mp, "no boundary in the body");
        return MP_MORE;
    }
    case ST_AFTER_DELIM: {
        size_t i = 0;
        while (i < len && (in[i] == ' ' || in[i] == '\t')) i++;  //  transport padding
        if (i > 256) return s_fail(mp, "padding after a boundary");
        if (len - i < 2) return eof ? s_fail(mp, "the body ends after a boundary") : MP_MORE;
        if (in[i] == '-' && in[i + 1] == '-') {
            *used = len;
            mp->state_ = ST_DONE;
            return MP_DONE;
        }
        if (in[i] != '\r' || in[i + 1] != '\n') return s_fail(mp, "junk after a boundary");
        *used = i + 2;
        mp->state_ = ST_HEAD;
        return MP_MORE;
    }
    case ST_HEAD: {
        size_t head_len;
        if (len >= 2 && in[0] == '\r' && in[1] == '\n') {
            head_len = 0;  //  no header lines
        } else {
            const char *hit = len >= 4 ? memmem(in, len, "\r\n\r\n", 4) : NULL;
            if (!hit) {
                //  Its end would lie past the limit (a decision that does not depend on how
                //  the bytes were split).
                if (len >= HEAD_MAX + 2) return s_fail(mp, "a part's head is over 16 KiB");
                return eof ? s_fail(mp, "the body ends inside a part's head") : MP_MORE;
            }
            head_len = (size_t) (hit - in) + 2;
            if (head_len > HEAD_MAX) return s_fail(mp, "a part's head is over 16 KiB");
        }
        if (head_len == 0 && len < 2) return eof ? s_fail(mp, "the body ends inside a part's head") : MP_MORE;
        if (s_parse_head(mp, in, in + head_len, out) != 0) return MP_ERROR;
        *used = head_len + 2;
        mp->state_ = ST_DATA;
        return MP_PART;
    }
    case ST_DATA: {
        const char *hit = len >= mp->dlen_ ? memmem(in, len, mp->delim_, mp->dlen_) : NULL;
        if (hit == in) {
            *used = mp->dlen_;
            mp->state_ = ST_AFTER_DELIM;
            return MP_PART_END;
        }
        size_t n = hit ? (size_t) (hit - in) : s_safe(mp, in, len);
        if (n == 0) return eof ? s_fail(mp, "the body ends inside a part") : MP_MORE;
        if (n > max_data) n = max_data;
        out->data = in;
        out->len = n;
        *used = n;
        return MP_DATA;
    }
    default: return s_fail(mp, "bad state");
    }
}
