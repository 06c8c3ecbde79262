/*  libFuzzer target: the small parsers of request text - percent-decoding, query strings,
    Host and Origin values, access-log redaction. The input is split at the first NUL
    into a value and a parameter name. Each function's contract is checked on what it
    returns: decoded text holds no NUL, hosts come back lowercased and of host
    characters, and the access log never shows a token's value.
*/
#include "bridge/http/hutil.h"

#include <ctype.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

//  Every token= or signature= parameter of a redacted target's query reads "...".
static void s_check_redacted(const char *out)
{
    const char *q = strchr(out, '?');
    if (!q) return;
    for (const char *p = q + 1; *p;) {
        const char *amp = strchr(p, '&');
        size_t plen = amp ? (size_t) (amp - p) : strlen(p);
        const char *eq = memchr(p, '=', plen);
        size_t klen = eq ? (size_t) (eq - p) : plen;
        bool secret = (klen == 5 && strncasecmp(p, "token", 5) == 0) ||
                      (klen == 9 && strncasecmp(p, "signature", 9) == 0);
        if (secret && !(plen == klen + 4 && memcmp(p + klen, "=...", 4) == 0)) abort();
        if (!amp) break;
        p = amp + 1;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    if (!text) return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    size_t tlen = strlen(text);
    const char *name = tlen < size ? text + tlen + 1 : "token";
    char out[256], scheme[16], hostport[256], big[4096];
    int port;
    long n = hutil_decode(text, tlen, true, out, sizeof out);
    if (n >= 0 && ((size_t) n > tlen || strlen(out) != (size_t) n)) abort();
    hutil_decode(text, tlen, false, out, 4);
    if (hutil_query(text, name, out, sizeof out) == 0 && !memchr(out, '\0', sizeof out)) abort();
    hutil_query(text, name, out, 1);
    if (hutil_host(text, out, sizeof out, &port) == 0) {
        if (port < 0 || port > 65535 || !out[0]) abort();
        for (const char *c = out; *c; c++)
            if (isupper((unsigned char) *c) ||
                !(isalnum((unsigned char) *c) || strchr("-._:", *c)))
                abort();
    }
    if (hutil_origin(text, scheme, sizeof scheme, hostport, sizeof hostport) == 0) {
        for (const char *c = scheme; *c; c++)
            if (isupper((unsigned char) *c)) abort();
        if (!hostport[0] || strchr(hostport, '/')) abort();
    }
    hutil_redact_target(text, big, sizeof big);
    if (strlen(big) + 1 < sizeof big) s_check_redacted(big);
    hutil_redact_target(text, out, sizeof out);
    hutil_redact_target(text, out, 8);
    free(text);
    return 0;
}
