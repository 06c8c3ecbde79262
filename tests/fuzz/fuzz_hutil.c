/*  libFuzzer target: the small parsers of request text - percent-decoding, query strings,
    Host and Origin values, access-log redaction. The input is split at the first NUL
    into a value and a parameter name.
*/
#include "bridge/http/hutil.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    if (!text) return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    const char *name = strlen(text) < size ? text + strlen(text) + 1 : "token";
    char out[256], scheme[16], hostport[256];
    int port;
    hutil_decode(text, strlen(text), true, out, sizeof out);
    hutil_decode(text, strlen(text), false, out, 4);
    hutil_query(text, name, out, sizeof out);
    hutil_query(text, name, out, 1);
    hutil_host(text, out, sizeof out, &port);
    hutil_origin(text, scheme, sizeof scheme, hostport, sizeof hostport);
    hutil_redact_target(text, out, sizeof out);
    hutil_redact_target(text, out, 8);
    free(text);
    return 0;
}
