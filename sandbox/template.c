/*  template - the read-only layers of a sandbox's root filesystem (see template.h). */
#include "template.h"
#include "base/kberr.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

struct _template_t {
    char *name;
    char *dir;      //  NULL: the host
    char **hidden;  //  NULL-terminated (host template)
};

static template_t *s_new(const char *name, int *err)
{
    template_t *self = calloc(1, sizeof *self);
    if (!self || !(self->name = strdup(name ? name : ""))) {
        free(self);
        *err = KB_ENOMEM;
        return NULL;
    }
    return self;
}

template_t *template_new_host(const char *name, const char *const *hidden, int *err)
{
    int dummy;
    if (!err) err = &dummy;
    template_t *self = s_new(name, err);
    if (!self) return NULL;
    size_t n = 0;
    while (hidden && hidden[n]) n++;
    self->hidden = calloc(n + 1, sizeof *self->hidden);
    if (!self->hidden) {
        template_destroy(&self);
        *err = KB_ENOMEM;
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        if (hidden[i][0] != '/') {
            template_destroy(&self);
            *err = KB_EINVAL;
            return NULL;
        }
        if (!(self->hidden[i] = strdup(hidden[i]))) {
            template_destroy(&self);
            *err = KB_ENOMEM;
            return NULL;
        }
    }
    return self;
}

template_t *template_new_dir(const char *name, const char *dir, char *why, size_t size, int *err)
{
    int dummy;
    char none[1];
    if (!err) err = &dummy;
    if (!why) {
        why = none;
        size = sizeof none;
    }
    struct stat st;
    if (!dir || dir[0] != '/' || stat(dir, &st) < 0 || !S_ISDIR(st.st_mode)) {
        snprintf(why, size, "template %s: no directory %s", name ? name : "", dir ? dir : "");
        *err = KB_ENOTFOUND;
        return NULL;
    }
    //  The layer lands in mount options: the characters overlayfs and the agent treat
    //  as separators cannot be in it.
    if (strpbrk(dir, ",:\\\n")) {
        snprintf(why, size, "template %s: %s has a ',', ':' or '\\' in it", name ? name : "", dir);
        *err = KB_EINVAL;
        return NULL;
    }
    static const char *const need[] = {"usr", "etc", "bin/sh"};
    for (size_t i = 0; i < sizeof need / sizeof need[0]; i++) {
        char p[4096];
        snprintf(p, sizeof p, "%s/%s", dir, need[i]);
        //  bin/sh may be a symlink into the template (bin -> usr/bin): lstat the name only
        if (lstat(p, &st) < 0) {
            snprintf(why, size, "template %s: %s is not a root filesystem (no /%s)",
                     name ? name : "", dir, need[i]);
            *err = KB_EINVAL;
            return NULL;
        }
    }
    template_t *self = s_new(name, err);
    if (!self) return NULL;
    self->dir = strdup(dir);
    if (!self->dir) {
        template_destroy(&self);
        *err = KB_ENOMEM;
        return NULL;
    }
    size_t n = strlen(self->dir);
    while (n > 1 && self->dir[n - 1] == '/') self->dir[--n] = '\0';
    return self;
}

void template_destroy(template_t **self_p)
{
    template_t *self = *self_p;
    if (!self) return;
    for (size_t i = 0; self->hidden && self->hidden[i]; i++) free(self->hidden[i]);
    free(self->hidden);
    free(self->dir);
    free(self->name);
    free(self);
    *self_p = NULL;
}

const char *template_name(const template_t *self)
{
    return self->name;
}

const char *template_dir(const template_t *self)
{
    return self->dir;
}

bool template_is_host(const template_t *self)
{
    return self->dir == NULL;
}

const char *const *template_hidden(const template_t *self)
{
    return (const char *const *) self->hidden;
}
