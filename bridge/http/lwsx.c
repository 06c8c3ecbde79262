/*  lwsx - libwebsockets header and query helpers. */
#include "lwsx.h"

#include <stdio.h>
#include <string.h>

int lwsx_query(struct lws *wsi, const char *name, char *out, size_t size)
{
    //  lws splits the query on '&' into fragments and URL-decodes each.
    size_t nlen = strlen(name);
    char frag[8192];
    for (int i = 0;; i++) {
        int n = lws_hdr_copy_fragment(wsi, frag, sizeof frag, WSI_TOKEN_HTTP_URI_ARGS, i);
        if (n < 0) return -1;
        if (strncmp(frag, name, nlen) == 0 && (frag[nlen] == '=' || frag[nlen] == '\0')) {
            const char *value = frag[nlen] == '=' ? frag + nlen + 1 : "";
            if (strlen(value) >= size) return -1;
            snprintf(out, size, "%s", value);
            return 0;
        }
    }
}

int lwsx_header(struct lws *wsi, enum lws_token_indexes token, char *out, size_t size)
{
    int total = lws_hdr_total_length(wsi, token);
    if (total <= 0 || (size_t) total >= size) return -1;
    return lws_hdr_copy(wsi, out, (int) size, token);
}

int lwsx_header_custom(struct lws *wsi, const char *name, char *out, size_t size)
{
    int nlen = (int) strlen(name);
    int total = lws_hdr_custom_length(wsi, name, nlen);
    if (total < 0 || (size_t) total >= size) return -1;
    return lws_hdr_custom_copy(wsi, out, (int) size, name, nlen);
}

int lwsx_path(struct lws *wsi, char *out, size_t size)
{
    static const enum lws_token_indexes tokens[] = {
        WSI_TOKEN_GET_URI,   WSI_TOKEN_POST_URI,    WSI_TOKEN_PUT_URI,  WSI_TOKEN_PATCH_URI,
        WSI_TOKEN_DELETE_URI, WSI_TOKEN_OPTIONS_URI, WSI_TOKEN_HEAD_URI,
    };
    for (size_t i = 0; i < sizeof tokens / sizeof *tokens; i++) {
        int n = lwsx_header(wsi, tokens[i], out, size);
        if (n >= 0) return n;
    }
    return -1;
}

int lwsx_write_response(struct lws *wsi, int status, const char *content_type, const char *body)
{
    //  Written by hand: during an upgrade lws has not yet recorded the request's HTTP
    //  version and would answer "HTTP/1.0", which strict WebSocket clients refuse.
    const char *reason = status == 400 ? "Bad Request" : status == 401 ? "Unauthorized"
                       : status == 403 ? "Forbidden" : status == 404 ? "Not Found"
                       : status == 503 ? "Service Unavailable" : "Error";
    unsigned char buf[LWS_PRE + 2048];
    size_t blen = strlen(body);
    if (blen > 1024) blen = 1024;
    int n = snprintf((char *) buf + LWS_PRE, sizeof buf - LWS_PRE,
                     "HTTP/1.1 %d %s\r\nserver: kbridge\r\ncontent-type: %s\r\n"
                     "content-length: %zu\r\nconnection: close\r\n\r\n%.*s",
                     status, reason, content_type, blen, (int) blen, body);
    if (n < 0 || (size_t) n >= sizeof buf - LWS_PRE) return -1;
    return lws_write(wsi, buf + LWS_PRE, (size_t) n, LWS_WRITE_HTTP_FINAL) == n ? 0 : -1;
}
