/*  connfile - a kernel's connection file: transport, ports, HMAC key.

    Written with mode 0600 before the kernel starts; the kernel binds every endpoint and
    kbridge connects. TCP ports are chosen by binding port 0 (racy against other programs,
    as in jupyter_client, but all five are held open together so they differ, and a port
    stays reserved in this process until its connfile is destroyed, so two kernels
    starting at once never get the same one). For the ipc transport, "ip" is a path
    prefix and endpoints are ipc://{ip}-{port}. Kernels in an isolated sandbox use ipc in
    the sandbox's own kernel directory, which kbridge reaches by a directory fd.
*/
#ifndef CONNFILE_H
#define CONNFILE_H

#include "kchan.h"

#include <stdbool.h>

#include <sys/types.h>

typedef struct _connfile_t connfile_t;

typedef struct {
    const char *kernel_id, *kernel_name;
    const char *transport;  //  "tcp" (default) or "ipc"
    const char *ip;         //  tcp: the address (default 127.0.0.1); ipc: the socket path
                            //  prefix (default: in the file's directory)
    const char *scheme;     //  "hmac-sha256" (NULL) or "hmac-sha512"
    //  Where the file goes: a directory path, or a directory fd (an isolated sandbox's
    //  kernel directory: the file is made with openat, O_EXCL | O_NOFOLLOW, so nothing
    //  planted there is followed), and that directory as the kernel sees it.
    const char *dir;
    int dirfd;              //  -1 to use dir
    const char *dir_inside; //  NULL: dir
    uid_t uid;              //  the file's owner ((uid_t) -1: ours)
    gid_t gid;
} connfile_opts_t;

//  Choose ports (tcp) and a fresh random key and write kernel-<kernel_id>.json. Returns
//  NULL on failure with *err set (KB_EINVAL for an unknown transport, KB_ESCHEME for an
//  unknown scheme, KB_EIO). Caller owns return value and must destroy it when done.
connfile_t *connfile_new(const connfile_opts_t *opts, int *err);

//  Forget the connection; with remove_files, also delete the file and any ipc socket
//  files left behind. Nullifies *self_p.
void connfile_destroy(connfile_t **self_p, bool remove_files);

//  TCP on the host: choose five fresh ports (none of the current ones) and rewrite the
//  file with them, same key, for the next process; the endpoints change accordingly.
//  Returns 0, KB_EINVAL (ipc, or a file in a sandbox's directory: nothing to choose) or
//  KB_EIO / KB_ENOMEM (the old ports stay).
int connfile_new_ports(connfile_t *self);

//  The file's path as the kernel sees it (borrowed).
const char *connfile_path(const connfile_t *self);
//  The key and scheme (borrowed).
const char *connfile_key(const connfile_t *self);
const char *connfile_scheme(const connfile_t *self);
//  ZeroMQ endpoint of a channel as the kernel sees it, e.g. "tcp://127.0.0.1:53143"
//  (borrowed).
const char *connfile_endpoint(const connfile_t *self, kchan_type_t channel);
//  ipc sockets in the file's directory: the channel's socket file name there (for openat
//  on the directory fd), or NULL.
const char *connfile_socket_name(const connfile_t *self, kchan_type_t channel);
//  Remove the ipc socket files a previous process left (it was killed before it could):
//  the next one binds fresh ones, and nothing connects to a dead one meanwhile.
void connfile_remove_sockets(connfile_t *self);

#endif
