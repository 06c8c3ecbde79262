/*  libFuzzer target: envd's own parsers of outside input (bridge/envd/): the path rule
    every file route applies and the Connect envelope of streaming requests.

    Paths, with invariants: the result is absolute, has no empty, "." or ".." segment,
    is no longer than PATH_MAX, cleaning it again changes nothing, and a relative path
    lands under home (the upload and RPC routes rely on the first three).
    Envelopes: a message is returned exactly when the 5-byte head has flags 0 and a
    length that is the rest of the body, and then it is a JSON object.

    Input: byte 0 picks the part; the rest is the path (NUL ends it) or the body.
*/
#include "bridge/envd/envd_int.h"
#include "base/kberr.h"

#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static void s_check_clean(const char *p)
{
    if (p[0] != '/') abort();
    size_t n = strlen(p);
    if (n >= PATH_MAX) abort();
    if (n > 1 && p[n - 1] == '/') abort();
    for (const char *s = p; *s;) {
        const char *seg = ++s;
        while (*s && *s != '/') s++;
        size_t len = (size_t) (s - seg);
        if (n == 1) break;
        if (len == 0 || (len == 1 && seg[0] == '.') || (len == 2 && seg[0] == '.' && seg[1] == '.'))
            abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    const char *rest = (const char *) data + 1;
    size_t len = size - 1;
    if (data[0] & 1) {
        const char *why = NULL;
        json_t *msg = envd__stream_message(rest, len, &why);
        bool framed = len >= 5 && data[1] == 0 &&
                      ((size_t) data[2] << 24 | (size_t) data[3] << 16 | (size_t) data[4] << 8 | data[5]) == len - 5;
        if (msg && (!framed || !json_is_object(msg))) abort();
        if (!msg && !why) abort();
        json_decref(msg);
        return 0;
    }
    char *path = malloc(len + 1);
    if (!path) abort();
    memcpy(path, rest, len);
    path[len] = '\0';
    static const char home[] = "/home/user";
    char out[PATH_MAX], again[PATH_MAX];
    int rc = envd__clean_path(home, path, out, sizeof out);
    if (rc == KB_OK) {
        s_check_clean(out);
        if (envd__clean_path(home, out, again, sizeof again) != KB_OK || strcmp(out, again) != 0) abort();
        //  relative paths without ".." stay under home
        if (path[0] != '/' && !strstr(path, "..") &&
            (strncmp(out, home, sizeof home - 1) != 0 || (out[sizeof home - 1] && out[sizeof home - 1] != '/')))
            abort();
    } else if (rc != KB_ETOOBIG && rc != KB_EINVAL) {
        abort();
    }
    if (rc == KB_EINVAL && *path) abort();
    free(path);
    return 0;
}
