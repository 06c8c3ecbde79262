/*  nmsg - /ws client messages, parsed and checked. */
#include "nmsg.h"
#include "../apikit/envcheck.h"
#include "../../base/jx.h"
#include "../procs/sproc.h"
#include "../../base/kberr.h"

#include <sodium.h>
#include <stdarg.h>
#include <stdlib.h>
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
    {"process_start", NMSG_PROCESS_START},
    {"process_connect", NMSG_PROCESS_CONNECT},
    {"process_input", NMSG_PROCESS_INPUT},
    {"process_close_stdin", NMSG_PROCESS_CLOSE_STDIN},
    {"process_signal", NMSG_PROCESS_SIGNAL},
    {"process_resize", NMSG_PROCESS_RESIZE},
    {"process_list", NMSG_PROCESS_LIST},
    {"files_list", NMSG_FILES_LIST},
    {"files_stat", NMSG_FILES_STAT},
    {"files_exists", NMSG_FILES_EXISTS},
    {"files_make_dir", NMSG_FILES_MAKE_DIR},
    {"files_write", NMSG_FILES_WRITE},
    {"files_read", NMSG_FILES_READ},
    {"files_remove", NMSG_FILES_REMOVE},
    {"files_rename", NMSG_FILES_RENAME},
    {"watch_start", NMSG_WATCH_START},
    {"watch_stop", NMSG_WATCH_STOP},
    {"sandbox_info", NMSG_SANDBOX_INFO},
    {"sandbox_set_timeout", NMSG_SANDBOX_SET_TIMEOUT},
    {"sandbox_kill", NMSG_SANDBOX_KILL},
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

//  "encoding": "text" (the default) or "base64".
static int s_encoding(nmsg_t *self, char *why, size_t size)
{
    const char *enc = NULL;
    if (jx_get_str(self->doc_, "encoding", &enc, true) ||
        (enc && strcmp(enc, "text") != 0 && strcmp(enc, "base64") != 0))
        return s_refuse(why, size, "%s", "encoding must be 'text' or 'base64'");
    self->base64 = enc && strcmp(enc, "base64") == 0;
    return KB_OK;
}

//  The process addressed: "pid" (a positive integer) or "tag" (a string).
static int s_target(nmsg_t *self, char *why, size_t size)
{
    json_t *req = self->doc_;
    if (jx_get_int(req, "pid", &self->pid, true) || self->pid < 0 || self->pid > INT32_MAX ||
        jx_get_str(req, "tag", &self->tag, true))
        return s_refuse(why, size, "%s", "pid must be a positive integer, tag a string");
    if (!self->pid && !self->tag)
        return s_refuse(why, size, "%s", "say which process: field 'pid' or 'tag' is required");
    return KB_OK;
}

//  "text" (UTF-8, NUL allowed) or "data" (base64): the bytes, copied.
static int s_bytes(nmsg_t *self, bool required, char *why, size_t size)
{
    json_t *req = self->doc_;
    const char *text = NULL, *data = NULL;
    size_t tlen = 0, dlen = 0;
    if (jx_get_strn(req, "text", &text, &tlen, true) || jx_get_strn(req, "data", &data, &dlen, true))
        return s_refuse(why, size, "%s", "text must be a string, data a base64 string");
    if (text && data) return s_refuse(why, size, "%s", "give text or data, not both");
    if (!text && !data) {
        if (required) return s_refuse(why, size, "%s", "field 'text' or 'data' is required");
        return KB_OK;
    }
    size_t cap = text ? tlen : dlen / 4 * 3 + 3;
    self->bytes = malloc(cap ? cap : 1);
    if (!self->bytes) return s_refuse(why, size, "%s", "out of memory");
    if (text) {
        memcpy(self->bytes, text, tlen);
        self->bytes_len = tlen;
        return KB_OK;
    }
    size_t n = 0;
    const char *end;
    if (sodium_base642bin((unsigned char *) self->bytes, cap, data, dlen, " \r\n", &n, &end,
                          sodium_base64_VARIANT_ORIGINAL) != 0 || end != data + dlen)
        return s_refuse(why, size, "%s", "data is not valid base64");
    self->bytes_len = n;
    return KB_OK;
}

static int s_path(nmsg_t *self, const char *key, const char **out, char *why, size_t size)
{
    size_t len;
    int rc = jx_get_strn(self->doc_, key, out, &len, false);
    if (rc) {
        char what[128];
        return s_refuse(why, size, "%s", jx_describe(rc, key, "a string", what, sizeof what));
    }
    if (!len) return s_refuse(why, size, "field '%s' is empty", key);
    if (strlen(*out) != len)
        return s_refuse(why, size, "%s holds a NUL character (at byte %zu)", key, strlen(*out));
    if (len > NMSG_MAX_PATH)
        return s_refuse(why, size, "%s is %zu bytes, more than the %d a path may have", key, len,
                        NMSG_MAX_PATH);
    return KB_OK;
}

static int s_user(nmsg_t *self, char *why, size_t size)
{
    if (jx_get_str(self->doc_, "user", &self->user, true) ||
        (self->user && strcmp(self->user, "root") != 0 && strcmp(self->user, "user") != 0))
        return s_refuse(why, size, "%s", "user must be 'root' or 'user'");
    return KB_OK;
}

static int s_size(json_t *obj, int64_t *cols, int64_t *rows)
{
    if (jx_get_int(obj, "cols", cols, false) || jx_get_int(obj, "rows", rows, false)) return KB_EINVAL;
    return *cols >= 1 && *cols <= 65535 && *rows >= 1 && *rows <= 65535 ? KB_OK : KB_EINVAL;
}

static int s_process_start(nmsg_t *self, char *why, size_t size)
{
    json_t *req = self->doc_;
    const char *cmd = NULL;
    size_t cmd_len = 0;
    json_t *args = NULL, *pty = NULL;
    int rc;
    if (jx_get_strn(req, "cmd", &cmd, &cmd_len, true) || jx_get_arr(req, "args", &args, true))
        return s_refuse(why, size, "%s", "cmd must be a string, args an array of strings");
    if (!cmd == !args) return s_refuse(why, size, "%s", "give cmd (run by /bin/bash -l -c) or args (an argv)");
    if (cmd && strlen(cmd) != cmd_len) return s_refuse(why, size, "%s", "cmd holds a NUL character");
    size_t n = args ? json_array_size(args) : 4;
    if (n == 0) return s_refuse(why, size, "%s", "args is empty: it needs at least the program");
    if (n > NMSG_MAX_ARGS) return s_refuse(why, size, "args has more than %d entries", NMSG_MAX_ARGS);
    self->argv = calloc(n + 1, sizeof *self->argv);
    if (!self->argv) return s_refuse(why, size, "%s", "out of memory");
    if (cmd) {
        self->argv[0] = "/bin/bash";
        self->argv[1] = "-l";
        self->argv[2] = "-c";
        self->argv[3] = cmd;
    } else {
        for (size_t i = 0; i < n; i++) {
            json_t *a = json_array_get(args, i);
            if (!json_is_string(a) || strlen(json_string_value(a)) != json_string_length(a))
                return s_refuse(why, size, "args[%zu] must be a string without NUL", i);
            self->argv[i] = json_string_value(a);
        }
        if (!self->argv[0][0]) return s_refuse(why, size, "%s", "args[0], the program, is empty");
    }
    if (jx_get_str(req, "cwd", &self->cwd, true) || jx_get_obj(req, "env_vars", &self->env_vars, true) ||
        jx_get_bool(req, "stdin", &self->stdin_on, true) || jx_get_str(req, "tag", &self->tag, true) ||
        jx_get_int(req, "timeout_ms", &self->timeout_ms, true) || self->timeout_ms < 0)
        return s_refuse(why, size, "%s", "cwd and tag must be strings, env_vars an object, stdin a "
                                         "boolean, timeout_ms a non-negative integer");
    if (self->cwd && strlen(self->cwd) > NMSG_MAX_PATH)
        return s_refuse(why, size, "%s", "cwd is too long");
    if (self->tag && (!*self->tag || strlen(self->tag) > 255))
        return s_refuse(why, size, "%s", "a tag must be 1 to 255 bytes");
    if ((rc = s_user(self, why, size)) || (rc = s_encoding(self, why, size))) return rc;
    if (json_object_get(req, "pty") && !json_is_null(json_object_get(req, "pty"))) {
        if (jx_get_obj(req, "pty", &pty, false) || s_size(pty, &self->cols, &self->rows))
            return s_refuse(why, size, "%s", "pty must be {cols, rows}, each 1 to 65535");
        self->pty = true;
    }
    return s_check_env(self->env_vars, why, size);
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
    case NMSG_PROCESS_START: return s_process_start(out, why, size);
    case NMSG_PROCESS_CONNECT: {
        int rc = s_target(out, why, size);
        return rc ? rc : s_encoding(out, why, size);
    }
    case NMSG_PROCESS_INPUT: {
        int rc = s_target(out, why, size);
        return rc ? rc : s_bytes(out, true, why, size);
    }
    case NMSG_PROCESS_CLOSE_STDIN: return s_target(out, why, size);
    case NMSG_PROCESS_SIGNAL: {
        int rc = s_target(out, why, size);
        if (rc) return rc;
        json_t *sig = json_object_get(req, "signal");
        if (json_is_integer(sig)) {
            json_int_t v = json_integer_value(sig);
            out->signo = v >= 1 && v <= 64 ? (int) v : 0;
        } else if (json_is_string(sig)) {
            out->signo = sproc_signo(json_string_value(sig));
        }
        if (!out->signo)
            return s_refuse(why, size, "%s", "signal must be a signal name (\"SIGTERM\", \"KILL\") "
                                             "or number (1 to 64)");
        return KB_OK;
    }
    case NMSG_PROCESS_RESIZE: {
        int rc = s_target(out, why, size);
        if (rc) return rc;
        if (s_size(req, &out->cols, &out->rows))
            return s_refuse(why, size, "%s", "cols and rows must be integers, 1 to 65535");
        return KB_OK;
    }
    case NMSG_PROCESS_LIST: return KB_OK;
    case NMSG_FILES_LIST:
    case NMSG_FILES_STAT:
    case NMSG_FILES_EXISTS:
    case NMSG_FILES_MAKE_DIR:
    case NMSG_FILES_WRITE:
    case NMSG_FILES_READ:
    case NMSG_FILES_REMOVE:
    case NMSG_FILES_RENAME:
    case NMSG_WATCH_START: {
        int rc = s_path(out, "path", &out->path, why, size);
        if (!rc) rc = s_user(out, why, size);
        if (rc) return rc;
        out->depth = 1;
        if (jx_get_int(req, "depth", &out->depth, true) || out->depth < 1 || out->depth > 64)
            return s_refuse(why, size, "%s", "depth must be an integer, 1 to 64");
        if (jx_get_bool(req, "parents", &out->parents, true) ||
            jx_get_bool(req, "recursive", &out->recursive, true))
            return s_refuse(why, size, "%s", "parents and recursive must be booleans");
        if (out->op == NMSG_FILES_RENAME) return s_path(out, "new_path", &out->new_path, why, size);
        if (out->op == NMSG_FILES_WRITE) return s_bytes(out, true, why, size);
        if (out->op == NMSG_FILES_READ) return s_encoding(out, why, size);
        return KB_OK;
    }
    case NMSG_WATCH_STOP:
        if (jx_get_str(req, "watch_id", &out->watch_id, false))
            return s_refuse(why, size, "%s", "field 'watch_id' is required: a string");
        return KB_OK;
    case NMSG_SANDBOX_INFO:
    case NMSG_SANDBOX_KILL: return KB_OK;
    case NMSG_SANDBOX_SET_TIMEOUT:
        out->timeout_ms = -1;
        if (jx_get_int(req, "timeout_ms", &out->timeout_ms, false) || out->timeout_ms < 0)
            return s_refuse(why, size, "%s", "timeout_ms must be a non-negative integer");
        return KB_OK;
    }
    return KB_OK;
}

void nmsg_free(nmsg_t *self)
{
    if (!self) return;
    json_decref(self->doc_);
    self->doc_ = NULL;
    free(self->argv);
    self->argv = NULL;
    free(self->bytes);
    self->bytes = NULL;
    self->id = NULL;
}
