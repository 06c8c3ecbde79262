/*  connfile - a kernel's connection file: transport, ports, HMAC key.

    Written with mode 0600 before the kernel starts; the kernel binds every endpoint and
    kbridge connects. TCP ports are chosen by binding port 0 (racy against other programs,
    as in jupyter_client, but all five are held open together so they differ, and a port
    stays reserved in this process until its connfile is destroyed, so two kernels
    starting at once never get the same one). For the
    ipc transport, "ip" is a path prefix and endpoints are ipc://{ip}-{port}.
*/
#ifndef CONNFILE_H
#define CONNFILE_H

#include "kchan.h"

#include <stdbool.h>

typedef struct _connfile_t connfile_t;

//  Choose ports and a fresh random key and write dir/kernel-<kernel_id>.json. transport
//  is "tcp" (ip defaults to 127.0.0.1) or "ipc" (ip defaults to a path in dir); scheme is
//  "hmac-sha256" (NULL) or "hmac-sha512". Returns NULL on failure with *err set
//  (KB_EINVAL for an unknown transport, KB_ESCHEME for an unknown scheme, KB_EIO).
//  Caller owns return value and must destroy it when done.
connfile_t *connfile_new(const char *dir, const char *kernel_id, const char *kernel_name,
                         const char *transport, const char *ip, const char *scheme, int *err);

//  Forget the connection; with remove_files, also delete the file and any ipc socket
//  files left behind. Nullifies *self_p.
void connfile_destroy(connfile_t **self_p, bool remove_files);

//  Absolute path of the file (borrowed).
const char *connfile_path(const connfile_t *self);
//  The key and scheme (borrowed).
const char *connfile_key(const connfile_t *self);
const char *connfile_scheme(const connfile_t *self);
//  ZeroMQ endpoint of a channel, e.g. "tcp://127.0.0.1:53143" (borrowed).
const char *connfile_endpoint(const connfile_t *self, kchan_type_t channel);

#endif
