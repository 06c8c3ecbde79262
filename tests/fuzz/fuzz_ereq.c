/*  libFuzzer target: the E2B API's bodies (bridge/e2b/ereq.c) - /execute and POST
    /contexts. The first byte picks which; the rest is the body. Refusals must be
    FastAPI-shaped (one detail with type, loc and msg) and serializable, and what the
    parser accepts must hold up to what e2b.c relies on.
*/
#include "bridge/apikit/envcheck.h"
#include "bridge/e2b/ereq.h"
#include "base/jx.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    ereq_kind_t kind = data[0] & 1 ? EREQ_CONTEXT : EREQ_EXECUTE;
    size_t len = size - 1;
    char *body = malloc(len ? len : 1);
    if (!body) return 0;
    memcpy(body, data + 1, len);
    ereq_t r;
    json_t *detail = (json_t *) 1;
    char why[200] = "";
    int status = ereq_parse(kind, body, len, &r, &detail, why, sizeof why);
    if (status == 422) {
        json_t *list = json_object_get(detail, "detail"), *one = json_array_get(list, 0);
        if (json_array_size(list) != 1 || !json_is_string(json_object_get(one, "type")) ||
            !json_is_array(json_object_get(one, "loc")) || !json_is_string(json_object_get(one, "msg")))
            abort();
        //  Sent as the reply body.
        char *text = jx_dumps(detail, false, NULL);
        if (!text) abort();
        free(text);
        json_decref(detail);
    } else if (status == 400) {
        if (kind != EREQ_EXECUTE || !why[0] || detail) abort();
    } else if (status == 0) {
        const char *bad;
        char ewhy[256];
        if (detail) abort();
        if (kind == EREQ_EXECUTE) {
            if (!r.code || (r.context_id && r.language)) abort();
            if (envcheck(r.env_vars, &bad, ewhy, sizeof ewhy) != ENVCHECK_OK) abort();
        }
    } else {
        abort();
    }
    ereq_free(&r);
    free(body);
    return 0;
}
