/*  libFuzzer target: the Jupyter REST API's bodies (bridge/jupyter/jreq.c) - POST
    /api/kernels, POST /api/sessions, PATCH /api/sessions/ID. The first byte picks which;
    the rest is the body. What the parser accepts must hold up to what jupyter.c relies
    on, so that is asserted too.
*/
#include "bridge/jupyter/jreq.h"
#include "base/jx.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    jreq_kind_t kind = (jreq_kind_t) (data[0] % 3);
    size_t len = size - 1;
    char *body = malloc(len ? len : 1);
    if (!body) return 0;
    memcpy(body, data + 1, len);
    jreq_t r;
    char why[256] = "";
    int status = jreq_parse(kind, body, len, &r, why, sizeof why);
    if (status) {
        if (status != 400 || !why[0]) abort();
    } else {
        if (kind == JREQ_SESSION_POST && !r.type) abort();
        if (r.kernel_why && (r.kernel_id || r.kernel_name)) abort();
        if (kind == JREQ_SESSION_PATCH) {
            //  What is merged into a session's model: strings only, known keys only.
            if (!json_is_object(r.patch) || json_object_size(r.patch) > 3) abort();
            const char *key;
            json_t *v;
            json_object_foreach(r.patch, key, v)
            {
                if (!json_is_string(v)) abort();
                if (strcmp(key, "path") && strcmp(key, "name") && strcmp(key, "type")) abort();
            }
        }
        //  A reply carries these back as JSON.
        json_t *model = json_pack("{s:s?, s:s?, s:s?}", "name", r.name, "path", r.path, "type", r.type);
        free(jx_dumps(model, false, NULL));
        json_decref(model);
    }
    jreq_free(&r);
    free(body);
    return 0;
}
