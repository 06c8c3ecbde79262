/*  ereq - E2B request bodies, parsed and checked. */
#include "ereq.h"
#include "../apikit/envcheck.h"
#include "../../base/jx.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

//  FastAPI's validation error: {"detail": [{type, loc, msg, input}]}. loc and input are
//  stolen (input may be NULL: null).
static int s_422(json_t **detail, const char *type, json_t *loc, const char *msg, json_t *input)
{
    json_t *one = json_pack("{s:s, s:o, s:s, s:o}", "type", type, "loc", loc, "msg", msg, "input",
                            input ? input : json_null());
    *detail = json_pack("{s:[o]}", "detail", one);
    return 422;
}

static int s_execute(ereq_t *self, json_t **detail, char *why, size_t size)
{
    json_t *doc = self->doc_;
    if (!json_is_object(doc))
        return s_422(detail, "model_attributes_type", json_pack("[s]", "body"),
                     "Input should be a valid dictionary or object to extract fields from", json_incref(doc));
    if (!json_object_get(doc, "code"))
        return s_422(detail, "missing", json_pack("[s, s]", "body", "code"), "Field required", json_incref(doc));
    static const char *strings[] = {"code", "context_id", "language"};
    for (int i = 0; i < 3; i++) {
        json_t *v = json_object_get(doc, strings[i]);
        if (v && !json_is_string(v) && !(i > 0 && json_is_null(v)))
            return s_422(detail, "string_type", json_pack("[s, s]", "body", strings[i]),
                         "Input should be a valid string", json_incref(v));
    }
    json_t *env = json_object_get(doc, "env_vars");
    if (json_is_null(env)) env = NULL;
    const char *bad;
    char what[200];
    switch (envcheck(env, &bad, what, sizeof what)) {
    case ENVCHECK_OK: break;
    case ENVCHECK_NOT_OBJECT:
        return s_422(detail, "dict_type", json_pack("[s, s]", "body", "env_vars"),
                     "Input should be a valid dictionary", json_incref(env));
    case ENVCHECK_NOT_STRING:
        return s_422(detail, "string_type", json_pack("[s, s, s]", "body", "env_vars", bad),
                     "Input should be a valid string", json_incref(json_object_get(env, bad)));
    default:
        return s_422(detail, "value_error", json_pack("[s, s, s]", "body", "env_vars", bad),
                     "Value error, environment variable names must be non-empty without '=', "
                     "values without NUL",
                     json_incref(json_object_get(env, bad)));
    }
    self->code = json_string_value(json_object_get(doc, "code"));
    self->context_id = json_string_value(json_object_get(doc, "context_id"));
    self->language = json_string_value(json_object_get(doc, "language"));
    self->env_vars = env;
    if (self->context_id && self->language) {
        snprintf(why, size, "Only one of context_id or language can be provided");
        return 400;
    }
    return 0;
}

static int s_context(ereq_t *self, json_t **detail)
{
    json_t *doc = self->doc_;
    if (!json_is_object(doc))
        return s_422(detail, "model_attributes_type", json_pack("[s]", "body"),
                     "Input should be a valid dictionary or object to extract fields from", NULL);
    json_t *lang = json_object_get(doc, "language"), *cwd = json_object_get(doc, "cwd");
    bool bad_lang = lang && !json_is_null(lang) && !json_is_string(lang);
    bool bad_cwd = cwd && !json_is_null(cwd) && !json_is_string(cwd);
    //  loc names the field that is wrong (a null language is fine: the default).
    if (bad_lang || bad_cwd)
        return s_422(detail, "string_type", json_pack("[s, s]", "body", bad_lang ? "language" : "cwd"),
                     "Input should be a valid string", NULL);
    self->language = json_string_value(lang);
    self->cwd = json_string_value(cwd);
    return 0;
}

int ereq_parse(ereq_kind_t kind, const char *body, size_t len, ereq_t *out, json_t **detail,
               char *why, size_t size)
{
    memset(out, 0, sizeof *out);
    *detail = NULL;
    if (kind == EREQ_CONTEXT) {
        //  An empty body is an empty object; anything unparsable is "not an object".
        out->doc_ = len ? jx_loadb(body, len, NULL) : json_object();
        return s_context(out, detail);
    }
    json_error_t jerr;
    out->doc_ = jx_loadb(body, len, &jerr);
    if (!out->doc_) {
        json_t *one = json_pack("{s:s, s:[s, i], s:s, s:{}, s:{s:s}}", "type", "json_invalid", "loc",
                                "body", jerr.position, "msg", "JSON decode error", "input", "ctx",
                                "error", jerr.text);
        *detail = json_pack("{s:[o]}", "detail", one);
        return 422;
    }
    return s_execute(out, detail, why, size);
}

void ereq_free(ereq_t *self)
{
    if (!self) return;
    json_decref(self->doc_);
    memset(self, 0, sizeof *self);
}
