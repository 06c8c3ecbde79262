/*  jreq - Jupyter REST bodies, parsed and checked. */
#include "jreq.h"
#include "../../base/jx.h"

#include <stdio.h>
#include <string.h>

static json_t *s_load(const char *body, size_t len, char *why, size_t size)
{
    while (len && (*body == ' ' || *body == '\n' || *body == '\r' || *body == '\t')) body++, len--;
    if (len == 0) return json_object();
    json_error_t jerr;
    json_t *doc = jx_loadb(body, len, &jerr);
    if (!doc) {
        snprintf(why, size, "Invalid JSON in request body: %s", jerr.text);
    } else if (!json_is_object(doc)) {
        snprintf(why, size, "Request body must be a JSON object");
        json_decref(doc);
        doc = NULL;
    }
    return doc;
}

//  {"kernel": {"id", "name"}}: checked now, refused only where it is used.
static void s_kernel(jreq_t *self)
{
    json_t *kernel = NULL;
    self->has_kernel = json_object_get(self->doc_, "kernel") != NULL;
    if (jx_get_obj(self->doc_, "kernel", &kernel, true))
        self->kernel_why = "'kernel' must be an object";
    else if (jx_get_str(kernel, "id", &self->kernel_id, true) ||
             jx_get_str(kernel, "name", &self->kernel_name, true))
        self->kernel_why = "kernel 'id' and 'name' must be strings";
    if (self->kernel_why) self->kernel_id = self->kernel_name = NULL;
}

int jreq_parse(jreq_kind_t kind, const char *body, size_t len, jreq_t *out, char *why, size_t size)
{
    memset(out, 0, sizeof *out);
    out->doc_ = s_load(body, len, why, size);
    if (!out->doc_) return 400;
    json_t *doc = out->doc_;
    switch (kind) {
    case JREQ_KERNEL_POST:
        if (jx_get_str(doc, "name", &out->name, true) || jx_get_str(doc, "path", &out->path, true)) {
            snprintf(why, size, "'name' and 'path' must be strings");
            return 400;
        }
        return 0;
    case JREQ_SESSION_POST:
        out->type = "notebook";
        if (jx_get_str(doc, "path", &out->path, true) || jx_get_str(doc, "name", &out->name, true) ||
            jx_get_str(doc, "type", &out->type, true)) {
            snprintf(why, size, "'path', 'name' and 'type' must be strings");
            return 400;
        }
        s_kernel(out);
        return 0;
    case JREQ_SESSION_PATCH: {
        //  Unlike a POST, null is not "absent" here: each field given must be a string.
        static const char *fields[] = {"path", "name", "type"};
        const char **values[] = {&out->path, &out->name, &out->type};
        out->patch = json_object();
        for (int i = 0; i < 3; i++) {
            json_t *v = json_object_get(doc, fields[i]);
            if (v && !json_is_string(v)) {
                snprintf(why, size, "'path', 'name' and 'type' must be strings");
                return 400;
            }
            *values[i] = json_string_value(v);
            if (v) json_object_set(out->patch, fields[i], v);
        }
        s_kernel(out);
        return 0;
    }
    }
    return 0;
}

void jreq_free(jreq_t *self)
{
    if (!self) return;
    json_decref(self->doc_);
    json_decref(self->patch);
    memset(self, 0, sizeof *self);
}
