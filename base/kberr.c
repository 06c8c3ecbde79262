/*  kberr - descriptions of kb_err_t codes. */
#include "kberr.h"

const char *kb_strerror(int err)
{
    switch (err) {
    case KB_OK: return "success";
    case KB_ENOMEM: return "out of memory";
    case KB_EINVAL: return "invalid argument";
    case KB_EPROTO: return "protocol error";
    case KB_EAUTH: return "authentication failed";
    case KB_EAGAIN: return "resource temporarily unavailable";
    case KB_ENOTFOUND: return "not found";
    case KB_EDEAD: return "kernel is dead";
    case KB_ETIMEDOUT: return "timed out";
    case KB_EIO: return "I/O error";
    case KB_ESPAWN: return "could not start the process";
    case KB_EBUSY: return "busy";
    case KB_ETOOBIG: return "too large";
    case KB_ESCHEME: return "unsupported signature scheme";
    case KB_EMISSING: return "required field missing";
    case KB_ETYPE: return "field has the wrong type";
    case KB_ECLOSED: return "closed";
    case KB_EEXIST: return "already exists";
    case KB_EACCES: return "permission denied";
    case KB_ENOTDIR: return "not a directory";
    case KB_EISDIR: return "is a directory";
    case KB_ENOSPC: return "no space left";
    case KB_ELIMIT: return "limit reached";
    default: return "unknown error";
    }
}
