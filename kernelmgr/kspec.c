/*  kspec - kernelspec discovery and argv templating. */
#include "kspec.h"
#include "../base/jx.h"
#include "../base/kberr.h"
#include "../base/klog.h"

#include <ctype.h>
#include <dirent.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

struct _kspec_t {
    char *name;
    char *resource_dir;
    char *prefix;       //  {prefix}: the prefix the spec is installed under
    json_t *spec;       //  normalized spec object
    json_t *resources;  //  logo files
    kspec_interrupt_t interrupt_mode;
};

static int s_valid_name(const char *name)
{
    if (!name || !*name || strlen(name) > 255) return 0;
    for (const char *p = name; *p; p++)
        if (!isalnum((unsigned char) *p) && *p != '.' && *p != '_' && *p != '-') return 0;
    return 1;
}

//  Data dirs in search order. Returns the count; dirs[i] are malloc'd.
static size_t s_data_dirs(char *dirs[], size_t max)
{
    size_t n = 0;
    const char *path = getenv("JUPYTER_PATH");
    if (path && *path) {
        char *copy = strdup(path), *save = NULL;
        for (char *tok = copy ? strtok_r(copy, ":", &save) : NULL; tok && n < max;
             tok = strtok_r(NULL, ":", &save))
            if (*tok) dirs[n++] = strdup(tok);
        free(copy);
    }
    const char *data_dir = getenv("JUPYTER_DATA_DIR");
    const char *home = getenv("HOME");
    if (n < max && data_dir && *data_dir)
        dirs[n++] = strdup(data_dir);
    else if (n < max && home && *home) {
        char buf[PATH_MAX];
        snprintf(buf, sizeof buf, "%s/.local/share/jupyter", home);
        dirs[n++] = strdup(buf);
    }
    if (n < max) dirs[n++] = strdup("/usr/local/share/jupyter");
    if (n < max) dirs[n++] = strdup("/usr/share/jupyter");
    return n;
}

static json_t *s_resources(const char *dir)
{
    json_t *res = json_object();
    DIR *d = opendir(dir);
    if (!d) return res;
    struct dirent *e;
    while ((e = readdir(d))) {
        const char *n = e->d_name;
        const char *dot = strrchr(n, '.');
        if (!dot) continue;
        if (strncmp(n, "logo-", 5) == 0 && (strcmp(dot, ".png") == 0 || strcmp(dot, ".svg") == 0)) {
            //  "logo-64x64.png" -> key "logo-64x64"; svg logos are keyed "logo-svg".
            char key[256];
            if (strcmp(dot, ".svg") == 0)
                snprintf(key, sizeof key, "logo-svg");
            else
                snprintf(key, sizeof key, "%.*s", (int) (dot - n), n);
            json_object_set_new(res, key, json_string(n));
        } else if (strcmp(n, "kernel.js") == 0 || strcmp(n, "kernel.css") == 0) {
            json_object_set_new(res, n, json_string(n));
        }
    }
    closedir(d);
    return res;
}

//  {prefix} in a spec's argv is the prefix of the environment the spec was installed
//  into (jupyter_client substitutes sys.prefix): <prefix>/share/jupyter/kernels/<name>.
//  Specs elsewhere fall back to /usr. Caller owns return value.
static char *s_prefix_of(const char *resource_dir)
{
    const char *mark = resource_dir ? strstr(resource_dir, "/share/jupyter/kernels/") : NULL;
    if (!mark) return strdup("/usr");
    if (mark == resource_dir) return strdup("/");
    return strndup(resource_dir, (size_t) (mark - resource_dir));
}

kspec_t *kspec_load(const char *resource_dir, const char *name, int *err)
{
    int dummy;
    if (!err) err = &dummy;
    *err = KB_EINVAL;
    char file[PATH_MAX];
    snprintf(file, sizeof file, "%s/kernel.json", resource_dir);
    json_error_t jerr;
    json_t *doc = json_load_file(file, 0, &jerr);
    if (!doc) {
        klog_warn("kernelspec %s: %s: %s", name, file, jerr.text);
        return NULL;
    }
    json_t *argv = NULL, *env = NULL, *metadata = NULL;
    const char *display_name = name, *language = NULL, *interrupt = "signal";
    int rc;
    if ((rc = jx_get_arr(doc, "argv", &argv, false)) ||
        (rc = jx_get_str(doc, "display_name", &display_name, true)) ||
        (rc = jx_get_str(doc, "language", &language, false)) ||
        (rc = jx_get_obj(doc, "env", &env, true)) ||
        (rc = jx_get_obj(doc, "metadata", &metadata, true)) ||
        (rc = jx_get_str(doc, "interrupt_mode", &interrupt, true))) {
        klog_warn("kernelspec %s: %s: %s", name, file, kb_strerror(rc));
        json_decref(doc);
        return NULL;
    }
    size_t i;
    json_t *arg;
    json_array_foreach(argv, i, arg) if (!json_is_string(arg))
    {
        klog_warn("kernelspec %s: argv must be a list of strings", name);
        json_decref(doc);
        return NULL;
    }
    if (json_array_size(argv) == 0 ||
        (strcmp(interrupt, "signal") != 0 && strcmp(interrupt, "message") != 0)) {
        klog_warn("kernelspec %s: empty argv or bad interrupt_mode", name);
        json_decref(doc);
        return NULL;
    }
    kspec_t *self = calloc(1, sizeof *self);
    if (!self) {
        json_decref(doc);
        *err = KB_ENOMEM;
        return NULL;
    }
    self->name = strdup(name);
    for (char *p = self->name; p && *p; p++) *p = (char) tolower((unsigned char) *p);
    self->resource_dir = realpath(resource_dir, NULL);
    if (!self->resource_dir) self->resource_dir = strdup(resource_dir);
    self->prefix = s_prefix_of(self->resource_dir);
    self->interrupt_mode =
        strcmp(interrupt, "message") == 0 ? KSPEC_INTERRUPT_MESSAGE : KSPEC_INTERRUPT_SIGNAL;
    self->spec = json_pack("{s:O, s:o, s:s, s:s, s:s, s:o}", "argv", argv, "env",
                           env ? json_deep_copy(env) : json_object(), "display_name",
                           display_name, "language", language, "interrupt_mode", interrupt,
                           "metadata", metadata ? json_deep_copy(metadata) : json_object());
    self->resources = s_resources(resource_dir);
    json_decref(doc);
    if (!self->name || !self->resource_dir || !self->prefix || !self->spec || !self->resources) {
        kspec_destroy(&self);
        *err = KB_ENOMEM;
        return NULL;
    }
    *err = KB_OK;
    return self;
}

kspec_t *kspec_find(const char *name, int *err)
{
    int dummy;
    if (!err) err = &dummy;
    *err = KB_ENOTFOUND;
    if (!s_valid_name(name)) return NULL;
    char *dirs[32];
    size_t ndirs = s_data_dirs(dirs, 32);
    kspec_t *found = NULL;
    for (size_t i = 0; i < ndirs && !found && *err == KB_ENOTFOUND; i++) {
        char kdir[PATH_MAX];
        snprintf(kdir, sizeof kdir, "%s/kernels", dirs[i] ? dirs[i] : "");
        DIR *d = opendir(kdir);
        if (!d) continue;
        struct dirent *e;
        while ((e = readdir(d)) && !found) {
            if (strcasecmp(e->d_name, name) != 0 || !s_valid_name(e->d_name)) continue;
            char rdir[PATH_MAX];
            if (snprintf(rdir, sizeof rdir, "%s/%s", kdir, e->d_name) >= (int) sizeof rdir)
                continue;
            found = kspec_load(rdir, e->d_name, err);
            if (!found) break;  //  a broken spec shadows later ones, as in jupyter_client
        }
        closedir(d);
    }
    for (size_t i = 0; i < ndirs; i++) free(dirs[i]);
    return found;
}

static int s_by_name(const void *a, const void *b)
{
    return strcmp(kspec_name(*(kspec_t *const *) a), kspec_name(*(kspec_t *const *) b));
}

size_t kspec_list(kspec_t ***specs)
{
    *specs = NULL;
    size_t count = 0, cap = 0;
    char *dirs[32];
    size_t ndirs = s_data_dirs(dirs, 32);
    for (size_t i = 0; i < ndirs; i++) {
        char kdir[PATH_MAX];
        snprintf(kdir, sizeof kdir, "%s/kernels", dirs[i] ? dirs[i] : "");
        DIR *d = opendir(kdir);
        if (!d) continue;
        struct dirent *e;
        while ((e = readdir(d))) {
            if (e->d_name[0] == '.' || !s_valid_name(e->d_name)) continue;
            int seen = 0;
            for (size_t j = 0; j < count && !seen; j++)
                seen = strcasecmp(kspec_name((*specs)[j]), e->d_name) == 0;
            if (seen) continue;
            char rdir[PATH_MAX];
            if (snprintf(rdir, sizeof rdir, "%s/%s", kdir, e->d_name) >= (int) sizeof rdir)
                continue;
            struct stat st;
            if (stat(rdir, &st) != 0 || !S_ISDIR(st.st_mode)) continue;
            kspec_t *spec = kspec_load(rdir, e->d_name, NULL);
            if (!spec) continue;
            if (count == cap) {
                cap = cap ? cap * 2 : 8;
                kspec_t **grown = realloc(*specs, cap * sizeof *grown);
                if (!grown) {
                    kspec_destroy(&spec);
                    break;
                }
                *specs = grown;
            }
            (*specs)[count++] = spec;
        }
        closedir(d);
    }
    for (size_t i = 0; i < ndirs; i++) free(dirs[i]);
    if (count) qsort(*specs, count, sizeof **specs, s_by_name);
    return count;
}

void kspec_list_destroy(kspec_t ***specs, size_t count)
{
    if (!specs || !*specs) return;
    for (size_t i = 0; i < count; i++) kspec_destroy(&(*specs)[i]);
    free(*specs);
    *specs = NULL;
}

kspec_t *kspec_dup(const kspec_t *self)
{
    kspec_t *copy = calloc(1, sizeof *copy);
    if (!copy) return NULL;
    copy->name = strdup(self->name);
    copy->resource_dir = strdup(self->resource_dir);
    copy->prefix = strdup(self->prefix);
    copy->spec = json_deep_copy(self->spec);
    copy->resources = json_deep_copy(self->resources);
    copy->interrupt_mode = self->interrupt_mode;
    if (!copy->name || !copy->resource_dir || !copy->prefix || !copy->spec || !copy->resources)
        kspec_destroy(&copy);
    return copy;
}

void kspec_destroy(kspec_t **self_p)
{
    if (!self_p || !*self_p) return;
    kspec_t *self = *self_p;
    free(self->name);
    free(self->resource_dir);
    free(self->prefix);
    json_decref(self->spec);
    json_decref(self->resources);
    free(self);
    *self_p = NULL;
}

const char *kspec_name(const kspec_t *self)
{
    return self->name;
}

const char *kspec_display_name(const kspec_t *self)
{
    return json_string_value(json_object_get(self->spec, "display_name"));
}

const char *kspec_language(const kspec_t *self)
{
    return json_string_value(json_object_get(self->spec, "language"));
}

const char *kspec_resource_dir(const kspec_t *self)
{
    return self->resource_dir;
}

kspec_interrupt_t kspec_interrupt_mode(const kspec_t *self)
{
    return self->interrupt_mode;
}

json_t *kspec_json(const kspec_t *self)
{
    return self->spec;
}

json_t *kspec_resources(const kspec_t *self)
{
    return self->resources;
}

//  Append src[0..len) to a growing buffer.
static int s_append(char **buf, size_t *len, size_t *cap, const char *src, size_t n)
{
    if (*len + n + 1 > *cap) {
        size_t grown = (*len + n + 1) * 2;
        char *p = realloc(*buf, grown);
        if (!p) return KB_ENOMEM;
        *buf = p;
        *cap = grown;
    }
    memcpy(*buf + *len, src, n);
    *len += n;
    (*buf)[*len] = '\0';
    return 0;
}

//  Replace {name} by lookup(name); unknown names stay as they are.
static char *s_template(const char *in, const char *open, const char *close,
                        const char *(*lookup)(const char *name, void *arg), void *arg)
{
    size_t len = 0, cap = 0;
    char *out = NULL;
    size_t olen = strlen(open);
    if (s_append(&out, &len, &cap, "", 0)) return NULL;
    const char *p = in;
    while (*p) {
        const char *start = strstr(p, open);
        if (!start) break;
        const char *name = start + olen;
        const char *end = name;
        while (isalnum((unsigned char) *end) || *end == '_') end++;
        if (end == name || strncmp(end, close, strlen(close)) != 0) {
            if (s_append(&out, &len, &cap, p, (size_t) (name - p))) goto fail;
            p = name;
            continue;
        }
        char key[128];
        snprintf(key, sizeof key, "%.*s", (int) (end - name), name);
        const char *value = lookup(key, arg);
        if (s_append(&out, &len, &cap, p, (size_t) (start - p))) goto fail;
        if (value) {
            if (s_append(&out, &len, &cap, value, strlen(value))) goto fail;
        } else if (s_append(&out, &len, &cap, start, (size_t) (end + strlen(close) - start)))
            goto fail;
        p = end + strlen(close);
    }
    if (s_append(&out, &len, &cap, p, strlen(p))) goto fail;
    return out;
fail:
    free(out);
    return NULL;
}

typedef struct {
    const kspec_t *spec;
    const char *connection_file;
} argv_vars_t;

static const char *s_argv_var(const char *name, void *arg)
{
    argv_vars_t *vars = arg;
    if (strcmp(name, "connection_file") == 0) return vars->connection_file;
    if (strcmp(name, "resource_dir") == 0) return vars->spec->resource_dir;
    if (strcmp(name, "prefix") == 0) return vars->spec->prefix;
    return NULL;
}

char **kspec_format_argv(const kspec_t *self, const char *connection_file)
{
    json_t *argv = json_object_get(self->spec, "argv");
    size_t n = json_array_size(argv);
    char **out = calloc(n + 1, sizeof *out);
    if (!out) return NULL;
    argv_vars_t vars = {self, connection_file};
    for (size_t i = 0; i < n; i++) {
        out[i] = s_template(json_string_value(json_array_get(argv, i)), "{", "}", s_argv_var,
                            &vars);
        if (!out[i]) {
            kspec_argv_free(out);
            return NULL;
        }
    }
    return out;
}

void kspec_argv_free(char **argv)
{
    if (!argv) return;
    for (char **p = argv; *p; p++) free(*p);
    free(argv);
}

static const char *s_env_var(const char *name, void *arg)
{
    (void) arg;
    const char *value = getenv(name);
    return value;
}

json_t *kspec_env(const kspec_t *self)
{
    json_t *out = json_object();
    const char *key;
    json_t *value;
    json_object_foreach(json_object_get(self->spec, "env"), key, value)
    {
        if (!json_is_string(value)) continue;
        char *expanded = s_template(json_string_value(value), "${", "}", s_env_var, NULL);
        if (expanded) json_object_set_new(out, key, json_string(expanded));
        free(expanded);
    }
    return out;
}

const char *kspec_default_name(void)
{
    const char *name = getenv("KBRIDGE_DEFAULT_KERNEL");
    return name && *name ? name : "python3";
}
