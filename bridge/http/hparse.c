/*  hparse - HTTP/1.1 heads and body framing. */
#include "hparse.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

//  The longest request target accepted (414 beyond).
#define MAX_TARGET 8192

long hparse_head_length(const char *data, size_t len, size_t max, size_t *scanned)
{
    //  Resume where the last call stopped (less the 3 bytes an end could straddle), so a
    //  head that trickles in a byte at a time is not rescanned from the start each time.
    size_t limit = len < max ? len : max;
    size_t i = scanned && *scanned > 3 ? *scanned - 3 : 0;
    for (; i + 3 < limit; i++)
        if (data[i] == '\r' && data[i + 1] == '\n' && data[i + 2] == '\r' && data[i + 3] == '\n')
            return (long) (i + 4);
    if (scanned) *scanned = limit;
    return len >= max ? -1 : 0;
}

//  RFC 9110 tchar.
static bool s_tchar(unsigned char c)
{
    if (isalnum(c)) return true;
    return c && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static void s_set_why(char *why, size_t size, const char *text)
{
    if (why && size) snprintf(why, size, "%s", text);
}

//  Split the header lines of copy (from *p to the empty line) into head->headers.
static int s_headers(char *p, char *end, hhead_t *head, char *why, size_t size)
{
    head->nheaders = 0;
    while (p < end) {
        char *eol = memchr(p, '\r', (size_t) (end - p));
        if (!eol || eol + 1 >= end || eol[1] != '\n') {
            s_set_why(why, size, "header lines must end in CRLF");
            return 400;
        }
        if (eol == p) return 0;  //  the empty line
        if (*p == ' ' || *p == '\t') {
            s_set_why(why, size, "folded header lines are not accepted");
            return 400;
        }
        *eol = '\0';
        char *colon = strchr(p, ':');
        if (!colon || colon == p) {
            s_set_why(why, size, "a header line has no name");
            return 400;
        }
        for (char *c = p; c < colon; c++) {
            if (!s_tchar((unsigned char) *c)) {
                s_set_why(why, size, "a header name has a character that is not allowed");
                return 400;
            }
            *c = (char) tolower((unsigned char) *c);
        }
        *colon = '\0';
        char *v = colon + 1;
        while (*v == ' ' || *v == '\t') v++;
        char *ve = eol;
        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t')) ve--;
        *ve = '\0';
        for (char *c = v; *c; c++) {
            unsigned char ch = (unsigned char) *c;
            if ((ch < 0x20 && ch != '\t') || ch == 0x7f) {
                s_set_why(why, size, "a header value has a control character");
                return 400;
            }
        }
        if (head->nheaders == HPARSE_MAX_HEADERS) {
            s_set_why(why, size, "too many header lines");
            return 431;
        }
        head->headers[head->nheaders].name = p;
        head->headers[head->nheaders].value = v;
        head->nheaders++;
        p = eol + 2;
    }
    s_set_why(why, size, "the head has no end");
    return 400;
}

static int s_version(const char *v, int *minor)
{
    if (strncmp(v, "HTTP/1.", 7) != 0 || !isdigit((unsigned char) v[7]) || v[8]) return -1;
    //  A later 1.x is served as 1.1, the highest minor we speak (RFC 9110 2.5), with all
    //  of its rules: a 1.9 request without Host is not let through as if it were 1.0.
    *minor = v[7] == '0' ? 0 : 1;
    return 0;
}

int hparse_request(const char *data, size_t len, hhead_t *head, char *why, size_t size)
{
    memset(head, 0, sizeof *head);
    if (len < 4 || memcmp(data + len - 4, "\r\n\r\n", 4) != 0) {
        s_set_why(why, size, "incomplete head");
        return 400;
    }
    if (memchr(data, '\0', len)) {
        s_set_why(why, size, "NUL in the head");
        return 400;
    }
    head->copy_ = malloc(len + 1);
    if (!head->copy_) {
        s_set_why(why, size, "out of memory");
        return 503;
    }
    memcpy(head->copy_, data, len);
    head->copy_[len] = '\0';
    char *p = head->copy_, *end = head->copy_ + len - 2;  //  end: the final CRLF
    char *eol = strstr(p, "\r\n");
    *eol = '\0';
    //  request-line = method SP request-target SP HTTP-version
    char *sp1 = strchr(p, ' ');
    char *sp2 = sp1 ? strchr(sp1 + 1, ' ') : NULL;
    if (!sp1 || !sp2 || strchr(sp2 + 1, ' ') || sp1 == p || sp2 == sp1 + 1) {
        s_set_why(why, size, "malformed request line");
        return 400;
    }
    *sp1 = *sp2 = '\0';
    for (char *c = p; *c; c++)
        if (!s_tchar((unsigned char) *c)) {
            s_set_why(why, size, "malformed method");
            return 400;
        }
    head->method = p;
    head->target = sp1 + 1;
    if (s_version(sp2 + 1, &head->version_minor) != 0) {
        s_set_why(why, size, "unsupported HTTP version (HTTP/1.0 and HTTP/1.1 are served)");
        return strncmp(sp2 + 1, "HTTP/", 5) == 0 ? 505 : 400;
    }
    if (strlen(head->target) > MAX_TARGET) {
        s_set_why(why, size, "request target too long");
        return 414;
    }
    for (const char *c = head->target; *c; c++) {
        unsigned char ch = (unsigned char) *c;
        if (ch <= 0x20 || ch >= 0x7f) {
            s_set_why(why, size, "the request target has a character that must be percent-encoded");
            return 400;
        }
    }
    if (head->target[0] != '/' && strcmp(head->target, "*") != 0) {
        s_set_why(why, size, "the request target must be a path (origin-form)");
        return 400;
    }
    int rc = s_headers(eol + 2, end + 2, head, why, size);
    if (rc) return rc;
    if (head->version_minor == 1 && !hparse_header(head, "host")) {
        s_set_why(why, size, "HTTP/1.1 requests need a Host header");
        return 400;
    }
    //  Two Hosts: the Host check would read the first, a proxy in front may route by the
    //  other (RFC 9112 3.2: 400).
    size_t hosts = 0;
    for (size_t i = 0; i < head->nheaders; i++) hosts += strcmp(head->headers[i].name, "host") == 0;
    if (hosts > 1) {
        s_set_why(why, size, "more than one Host header");
        return 400;
    }
    return 0;
}

int hparse_response(const char *data, size_t len, hhead_t *head, char *why, size_t size)
{
    memset(head, 0, sizeof *head);
    if (len < 4 || memcmp(data + len - 4, "\r\n\r\n", 4) != 0 || memchr(data, '\0', len)) {
        s_set_why(why, size, "malformed response head");
        return -1;
    }
    head->copy_ = malloc(len + 1);
    if (!head->copy_) return -1;
    memcpy(head->copy_, data, len);
    head->copy_[len] = '\0';
    char *p = head->copy_, *end = head->copy_ + len - 2;
    char *eol = strstr(p, "\r\n");
    *eol = '\0';
    //  status-line = HTTP-version SP status-code SP [reason-phrase]
    char *sp1 = strchr(p, ' ');
    if (!sp1) {
        s_set_why(why, size, "malformed status line");
        return -1;
    }
    *sp1 = '\0';
    if (s_version(p, &head->version_minor) != 0 || !isdigit((unsigned char) sp1[1]) ||
        !isdigit((unsigned char) sp1[2]) || !isdigit((unsigned char) sp1[3]) ||
        (sp1[4] != ' ' && sp1[4] != '\0')) {
        s_set_why(why, size, "malformed status line");
        return -1;
    }
    head->status = (sp1[1] - '0') * 100 + (sp1[2] - '0') * 10 + (sp1[3] - '0');
    head->reason = sp1[4] ? sp1 + 5 : "";
    return s_headers(eol + 2, end + 2, head, why, size) ? -1 : 0;
}

void hparse_free(hhead_t *head)
{
    free(head->copy_);
    memset(head, 0, sizeof *head);
}

const char *hparse_header(const hhead_t *head, const char *name)
{
    for (size_t i = 0; i < head->nheaders; i++)
        if (strcmp(head->headers[i].name, name) == 0) return head->headers[i].value;
    return NULL;
}

bool hparse_header_has_token(const hhead_t *head, const char *name, const char *token)
{
    size_t tlen = strlen(token);
    for (size_t i = 0; i < head->nheaders; i++) {
        if (strcmp(head->headers[i].name, name) != 0) continue;
        const char *v = head->headers[i].value;
        while (*v) {
            while (*v == ' ' || *v == '\t' || *v == ',') v++;
            const char *e = v;
            while (*e && *e != ',') e++;
            const char *te = e;
            while (te > v && (te[-1] == ' ' || te[-1] == '\t')) te--;
            if ((size_t) (te - v) == tlen && strncasecmp(v, token, tlen) == 0) return true;
            v = e;
        }
    }
    return false;
}

//  Content-Length: 1*DIGIT, nothing else; all copies must agree.
static int s_content_length(const hhead_t *head, bool *present, uint64_t *length)
{
    *present = false;
    for (size_t i = 0; i < head->nheaders; i++) {
        if (strcmp(head->headers[i].name, "content-length") != 0) continue;
        const char *v = head->headers[i].value;
        if (!*v || strlen(v) > 19) return -1;
        uint64_t n = 0;
        for (const char *c = v; *c; c++) {
            if (!isdigit((unsigned char) *c)) return -1;
            n = n * 10 + (uint64_t) (*c - '0');
        }
        if (*present && n != *length) return -1;
        *present = true;
        *length = n;
    }
    return 0;
}

int hparse_request_body(const hhead_t *head, hbody_t *framing, uint64_t *length, char *why,
                        size_t size)
{
    *framing = HBODY_NONE;
    *length = 0;
    bool has_length;
    if (s_content_length(head, &has_length, length) != 0) {
        s_set_why(why, size, "malformed Content-Length");
        return 400;
    }
    const char *te = NULL;
    int te_count = 0;
    for (size_t i = 0; i < head->nheaders; i++)
        if (strcmp(head->headers[i].name, "transfer-encoding") == 0) {
            te = head->headers[i].value;
            te_count++;
        }
    if (te) {
        if (has_length) {
            s_set_why(why, size, "Transfer-Encoding and Content-Length together");
            return 400;
        }
        if (te_count > 1 || strcasecmp(te, "chunked") != 0) {
            s_set_why(why, size, "only the chunked transfer coding is implemented");
            return 501;
        }
        if (head->version_minor == 0) {
            s_set_why(why, size, "chunked bodies need HTTP/1.1");
            return 400;
        }
        *framing = HBODY_CHUNKED;
        return 0;
    }
    if (has_length && *length > 0) *framing = HBODY_LENGTH;
    return 0;
}

int hparse_response_body(const hhead_t *head, const char *method, hbody_t *framing,
                         uint64_t *length)
{
    *framing = HBODY_NONE;
    *length = 0;
    if ((method && strcmp(method, "HEAD") == 0) || head->status / 100 == 1 || head->status == 204 ||
        head->status == 304)
        return 0;
    bool has_length;
    if (s_content_length(head, &has_length, length) != 0) return -1;
    const char *te = hparse_header(head, "transfer-encoding");
    if (te) {
        //  The last coding must be chunked for the length to be known; otherwise the
        //  body runs until the server closes.
        *framing = hparse_header_has_token(head, "transfer-encoding", "chunked") ? HBODY_CHUNKED
                                                                                 : HBODY_UNTIL_CLOSE;
        return 0;
    }
    if (has_length) {
        *framing = *length ? HBODY_LENGTH : HBODY_NONE;
        return 0;
    }
    *framing = HBODY_UNTIL_CLOSE;
    return 0;
}

bool hparse_keep_alive(const hhead_t *head)
{
    if (hparse_header_has_token(head, "connection", "close")) return false;
    if (head->version_minor == 0) return hparse_header_has_token(head, "connection", "keep-alive");
    return true;
}

const char *hparse_reason(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 206: return "Partial Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 416: return "Range Not Satisfiable";
    case 422: return "Unprocessable Entity";
    case 426: return "Upgrade Required";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    case 507: return "Insufficient Storage";
    default: return "";
    }
}
