/*  kberr - the one error enum of kbridge, and its strerror.

    Fallible functions that return int return 0 or a negative kb_err_t. Constructors return NULL
    and, where the reason matters to a caller, report it through an `int *err` out
    parameter. assert() is kept for contract violations only.
*/
#ifndef KBERR_H
#define KBERR_H

typedef enum {
    KB_OK = 0,
    KB_ENOMEM = -1,     //  allocation failed
    KB_EINVAL = -2,     //  bad argument or malformed input
    KB_EPROTO = -3,     //  wire protocol violation (frames, delimiter, JSON)
    KB_EAUTH = -4,      //  bad, missing or replayed signature; bad token
    KB_EAGAIN = -5,     //  would block (socket at high-water mark); nothing was queued
    KB_ENOTFOUND = -6,  //  no such kernel, kernelspec, context or session
    KB_EDEAD = -7,      //  the kernel process is not alive
    KB_ETIMEDOUT = -8,  //  a deadline passed
    KB_EIO = -9,        //  operating-system I/O error (see errno in the log)
    KB_ESPAWN = -10,    //  the kernel process could not be started
    KB_EBUSY = -11,     //  a conflicting operation is in progress
    KB_ETOOBIG = -12,   //  input exceeds a configured size limit
    KB_ESCHEME = -13,   //  unsupported signature scheme
    KB_EMISSING = -14,  //  a required JSON field is absent
    KB_ETYPE = -15,     //  a JSON field has the wrong type
    KB_ECLOSED = -16,   //  the object is shutting down or gone
    KB_EEXIST = -17,    //  it already exists
    KB_EACCES = -18,    //  permission denied
    KB_ENOTDIR = -19,   //  a path component is not a directory
    KB_EISDIR = -20,    //  it is a directory
    KB_ENOSPC = -21,    //  no space left (disk or quota)
    KB_ELIMIT = -22,    //  a configured cap was reached (kernels, sandboxes, connections, pids)
    KB_ERR_MIN_ = -23
} kb_err_t;

//  Returns a static, human-readable description of err. Never NULL.
const char *kb_strerror(int err);

#endif
