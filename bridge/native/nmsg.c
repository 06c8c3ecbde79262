/*  nmsg - /ws client messages, parsed and checked. */
#include "nmsg.h"
#include "../apikit/envcheck.h"
#include "../../base/jx.h"
#include "../../base/kberr.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static const struct {
    const char *name;
    nmsg_op_t op;
} s_ops[] = {
    {"execute", NMSG_EXECUTE},
    {"start_kernel", NMSG_START_KERNEL},
    {"list_kernels", NMSG_LIST_KERNELS},
    {"interrupt_kernel", NMSG_INTERRUPT_KERNEL},
    {"restart_kernel", NMSG_RESTART_KERNEL},
    {"shutdown_kernel", NMSG_SHUTDOWN_KERNEL},
    {"keep_alive", NMSG_KEEP_ALIVE},
    {"ack", NMSG_ACK},
};

static int s_refuse(char *why, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int s_refuse(char *why, size_t size, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, size, fmt, ap);
    va_end(ap);
    return KB_EINVAL;
}

static int s_check_env(json_t *env, char *why, size_t size)
{
    const char *bad;
    return envcheck(env, &bad, why, size) == ENVCHECK_OK ? KB_OK : KB_EINVAL;
}

static int s_execute(nmsg_t *self, char *why, size_t size)
{
    json_t *req = self->doc_;
    int rc;
    if ((rc = jx_get_strn(req, "code", &self->code, &self->code_len, false))) {
        char what[128];
        return s_refuse(why, size, "%s", jx_describe(rc, "code", "a string", what, sizeof what));
    }
    //  A kernel reads code as a C string: everything after a NUL would silently vanish.
    if (strlen(self->code) != self->code_len) {
        snprintf(why, size, "code holds a NUL character (at byte %zu); remove it", strlen(self->code));
        return KB_EINVAL;
    }
    if (jx_get_str(req, "kernel_id", &self->kernel_id, true) ||
        jx_get_obj(req, "env_vars", &self->env_vars, true) ||
        jx_get_int(req, "timeout_ms", &self->timeout_ms, true) || self->timeout_ms < 0)
        return s_refuse(why, size, "%s",
                        "kernel_id must be a string, env_vars an object of strings, timeout_ms a "
                        "non-negative integer");
    return s_check_env(self->env_vars, why, size);
}

static int s_start_kernel(nmsg_t *self, char *why, size_t size)
{
    json_t *req = self->doc_;
    if (jx_get_str(req, "kernel_name", &self->kernel_name, true) ||
        jx_get_str(req, "cwd", &self->cwd, true) || jx_get_obj(req, "env_vars", &self->env_vars, true))
        return s_refuse(why, size, "%s", "kernel_name and cwd must be strings, env_vars an object");
    return s_check_env(self->env_vars, why, size);
}

static int s_kernel_id(nmsg_t *self, char *why, size_t size)
{
    int rc = jx_get_str(self->doc_, "kernel_id", &self->kernel_id, false);
    if (rc) {
        char what[128];
        return s_refuse(why, size, "%s", jx_describe(rc, "kernel_id", "a string", what, sizeof what));
    }
    return KB_OK;
}

int nmsg_parse(const char *data, size_t len, bool binary, nmsg_t *out, char *why, size_t size)
{
    memset(out, 0, sizeof *out);
    if (binary) return s_refuse(why, size, "%s", "binary frames are not accepted: send JSON text");
    json_error_t jerr;
    out->doc_ = jx_loadb(data, len, &jerr);
    if (!out->doc_) return s_refuse(why, size, "malformed JSON: %s", jerr.text);
    json_t *req = out->doc_;
    if (!json_is_object(req)) return s_refuse(why, size, "%s", "a request must be a JSON object");
    json_t *id = json_object_get(req, "id");
    if (!id || !(json_is_string(id) || json_is_integer(id)))
        return s_refuse(why, size, "%s", "field 'id' is required: a string or an integer");
    //  From here on an error goes to the request.
    out->id = id;
    if (jx_get_str(req, "op", &out->op_name, false))
        return s_refuse(why, size, "%s", "field 'op' is required: a string");
    size_t i = 0, n = sizeof s_ops / sizeof *s_ops;
    while (i < n && strcmp(s_ops[i].name, out->op_name) != 0) i++;
    if (i == n) {
        snprintf(why, size, "unknown op '%.64s'", out->op_name);
        return KB_EINVAL;
    }
    out->op = s_ops[i].op;
    switch (out->op) {
    case NMSG_EXECUTE: return s_execute(out, why, size);
    case NMSG_START_KERNEL: return s_start_kernel(out, why, size);
    case NMSG_INTERRUPT_KERNEL:
    case NMSG_RESTART_KERNEL:
    case NMSG_SHUTDOWN_KERNEL: return s_kernel_id(out, why, size);
    case NMSG_KEEP_ALIVE:
        out->seconds = -1;
        if (jx_get_int(req, "seconds", &out->seconds, false) || out->seconds < 0)
            return s_refuse(why, size, "%s", "seconds must be a non-negative integer");
        return KB_OK;
    case NMSG_ACK:
        out->seq = -1;
        if (jx_get_int(req, "seq", &out->seq, false) || out->seq < 0)
            return s_refuse(why, size, "%s", "seq must be a non-negative integer");
        return KB_OK;
    case NMSG_LIST_KERNELS: return KB_OK;
    }
    return KB_OK;
}

void nmsg_free(nmsg_t *self)
{
    if (!self) return;
    json_decref(self->doc_);
    self->doc_ = NULL;
    self->id = NULL;
}
