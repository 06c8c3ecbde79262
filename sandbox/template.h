/*  template - the read-only layers a sandbox's root filesystem is made of.

    "base" is the host's own system: /usr, /etc, /opt, /var and the top-level symlinks
    (/bin -> usr/bin...), seen through idmapped mounts so that host root's files belong
    to the sandbox's root, with kbridge's own files and the host's secrets (/etc/shadow,
    private keys, the state and runtime directories, the token file) hidden. Every other
    template is one root-filesystem directory (for example one made with debootstrap).
    The sandbox's writable layer sits on top of either (overlayfs), so the template is
    never changed.
*/
#ifndef TEMPLATE_H
#define TEMPLATE_H

#include <stdbool.h>
#include <stddef.h>

typedef struct _template_t template_t;

//  The host system as a template named name. hidden: host paths never to show (borrowed,
//  NULL-terminated; copied). Caller owns return value and must destroy it when done.
template_t *template_new_host(const char *name, const char *const *hidden, int *err);

//  A root-filesystem directory as a template. Returns NULL with *err = KB_ENOTFOUND (no
//  such directory) or KB_EINVAL (not a root filesystem: no /usr, /etc or /bin/sh), with
//  the reason in why. Caller owns return value and must destroy it when done.
template_t *template_new_dir(const char *name, const char *dir, char *why, size_t size, int *err);

void template_destroy(template_t **self_p);

const char *template_name(const template_t *self);
//  The directory of a directory template; NULL for the host template.
const char *template_dir(const template_t *self);
bool template_is_host(const template_t *self);
//  The host template's hidden paths, NULL-terminated (borrowed); NULL for a directory
//  template.
const char *const *template_hidden(const template_t *self);

#endif
