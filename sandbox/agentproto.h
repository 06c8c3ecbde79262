/*  agentproto - the messages between kbridge and a sandbox's agent (kbridge-agent).

    Transport: one AF_UNIX SOCK_SEQPACKET socketpair per sandbox, so every message is one
    datagram (no framing to get wrong) and file descriptors travel with SCM_RIGHTS.
    Shared by both sides: kbridge (libuv) and the agent (libc only), so this file uses
    nothing but libc.

    Wire format, all integers little-endian, no alignment assumed:

        header (16 bytes): u16 magic 'KA' (0x414b), u8 version, u8 type, u32 payload
                           length (must equal datagram length - 16), u64 request id
        payload: fields, each  u16 tag, u16 zero, u32 len, len bytes

    A string field holds its bytes plus one terminating NUL and no other NUL, so a parsed
    string can be used in place. A nested field (APT_ENTRY) holds fields itself.

    Trust: the agent runs inside the sandbox, and code there can ptrace or replace it, so
    kbridge treats every byte it receives as hostile: ap_parse() checks every length, and
    the ap_decode_*() helpers check every field kbridge uses (types, ranges, NULs). The
    fuzz target tests/fuzz/fuzz_agentproto.c feeds them arbitrary bytes.

    Request ids are chosen by kbridge, unique per sandbox (a 64-bit counter, never reused).
    Replies and events carry the id of the request they belong to; a process's EXIT carries
    the id of its SPAWN, a watch's events that of its WATCH.
*/
#ifndef AGENTPROTO_H
#define AGENTPROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define AP_MAGIC 0x414b
#define AP_VERSION 1
#define AP_HEADER 16
//  Largest datagram either side sends (AF_UNIX seqpacket needs the socket's send buffer to
//  hold a whole datagram; the default 208 KiB holds this).
#define AP_MAX_MSG (128 * 1024)
//  Most fields one message (or one nested field) may have.
#define AP_MAX_FIELDS 8192
//  Most file descriptors one message carries.
#define AP_MAX_FDS 4

//  Message types. kbridge -> agent:
enum {
    AP_CONFIG = 1,         //  first message: what the sandbox is
    AP_SPAWN = 2,          //  -> AP_SPAWNED (fds) | AP_ERROR; later AP_EXIT
    AP_KILL = 3,           //  signal the process of SPAWN id (no reply)
    AP_STAT = 4,           //  -> AP_ENTRIES | AP_ERROR
    AP_LIST = 5,           //  -> AP_ENTRIES (more=1 ... more=0) | AP_ERROR
    AP_MKDIR = 6,          //  -> AP_ENTRIES | AP_ERROR
    AP_RENAME = 7,         //  -> AP_ENTRIES | AP_ERROR
    AP_REMOVE = 8,         //  -> AP_ENTRIES (none) | AP_ERROR
    AP_SETMETA = 9,        //  -> AP_ENTRIES | AP_ERROR
    AP_OPEN = 10,          //  -> AP_FD (fd, entry) | AP_ERROR
    AP_UPLOAD_BEGIN = 11,  //  -> AP_FD (fd) | AP_ERROR
    AP_UPLOAD_COMMIT = 12, //  carries the upload's fd, APT_UPLOAD -> AP_ENTRIES | AP_ERROR
    AP_UPLOAD_ABORT = 13,  //  carries the upload's fd; id = the BEGIN's (no reply)
    AP_WATCH = 14,         //  -> AP_WATCH_STARTED | AP_ERROR; AP_WATCH_EVENT*; AP_WATCH_END
    AP_CANCEL = 15,        //  id = a request's: stop it (kill its worker); no reply
};
//  agent -> kbridge:
enum {
    AP_HELLO = 32,          //  the sandbox is up (err 0, pid = the agent's inside) or failed
    AP_AGENT_PID = 33,      //  namespaces: the host pid of the agent (pid 1 inside)
    AP_SPAWNED = 34,        //  pid; fds: stdin (if APS_STDIN), stdout, stderr, or the pty master
    AP_EXIT = 35,           //  pid, status (as waitpid gives it)
    AP_ERROR = 36,          //  err (a negative KB_ code), why; id 0: the sandbox failed
                            //  after HELLO (its network), and kbridge ends it
    AP_ENTRIES = 37,        //  APT_ENTRY*, more
    AP_FD = 38,             //  one fd, APT_ENTRY?
    AP_WATCH_STARTED = 39,
    AP_WATCH_EVENT = 40,    //  evtype, name, isdir
    AP_WATCH_END = 41,      //  err, why
};

//  Field tags.
enum {
    //  AP_CONFIG
    APT_MODE = 1,         //  u32: 0 isolation none, 1 namespaces
    APT_SBX_ID = 2,       //  str
    APT_UID_BASE = 3,     //  u32
    APT_STATE_DIR = 4,    //  str
    APT_TMPL_DIR = 5,     //  str (absent: the host template)
    APT_HIDDEN = 6,       //  str, repeated
    APT_CGROUP_PROCS = 7, //  str, repeated: cgroup.procs files the agent joins first
    APT_TMP_BYTES = 8,    //  u64
    APT_KERNEL_DIR = 9,   //  str (isolation none)
    APT_HOME = 10,        //  str (isolation none)
    APT_INTERNET = 11,    //  u32
    APT_PASTA = 12,       //  str: the pasta executable
    APT_DEBUG = 13,       //  u32
    APT_OWN_KERNEL_DIR = 14,  //  u32 (isolation none): empty and remove the kernel dir on exit
    //  AP_SPAWN, AP_KILL
    APT_ARGV = 20,        //  str, repeated
    APT_ENV = 21,         //  str, repeated
    APT_CWD = 22,         //  str
    APT_USER = 23,        //  str: "root" or "user"; absent: the agent's own
    APT_FLAGS = 24,       //  u32: AF_*
    APT_COLS = 25,        //  u32
    APT_ROWS = 26,        //  u32
    APT_SIGNO = 27,       //  u32
    APT_GROUP = 28,       //  u32: AK_* (absent: AK_GROUP)
    //  file operations
    APT_PATH = 30,        //  str
    APT_PATH2 = 31,       //  str (rename: to)
    APT_DEPTH = 32,       //  u32
    APT_PARENTS = 33,     //  u32
    APT_META = 34,        //  str, repeated: name, value, name, value...
    APT_RECURSIVE = 35,   //  u32
    APT_UPLOAD = 36,      //  u64: AP_UPLOAD_COMMIT: the id of its AP_UPLOAD_BEGIN
    //  replies
    APT_PID = 40,         //  u32
    APT_STATUS = 41,      //  u32 (wait status)
    APT_ERR = 42,         //  u32 holding a negative KB_ code
    APT_WHY = 43,         //  str
    APT_VERSION = 44,     //  u32
    APT_MORE = 45,        //  u32
    APT_ENTRY = 50,       //  nested: AE_*
    APT_EVTYPE = 60,      //  u32: SBX_EV_*
    APT_NAME = 61,        //  str
    APT_ISDIR = 62,       //  u32
};
//  Fields of an APT_ENTRY.
enum {
    APE_NAME = 1, APE_PATH = 2, APE_TYPE = 3, APE_TTYPE = 4, APE_TARGET = 5, APE_SIZE = 6,
    APE_MODE = 7, APE_UID = 8, APE_GID = 9, APE_OWNER = 10, APE_GROUP = 11, APE_MTIME = 12,
    APE_META = 13,  //  str, repeated: name, value...
};
//  APT_FLAGS of AP_SPAWN (and of AP_SPAWNED: which fds come).
enum { APS_STDIN = 1, APS_PTY = 2 };
//  APT_GROUP of AP_KILL: who gets the signal.
enum {
    AK_PROCESS = 0,  //  the process (any of its threads)
    AK_GROUP = 1,    //  its process group
    //  Its main thread, only if that thread has been asleep in one system call since the
    //  previous AK_MAIN_IF_ASLEEP (the first one only measures), and once per AK_GROUP or
    //  AK_PROCESS signal: a signal that raced a blocking call is repeated there, never
    //  one the process is already handling.
    AK_MAIN_IF_ASLEEP = 2,
};

//  Limits both sides enforce.
#define AP_MAX_META 32          //  user.kbridge.* attributes reported per entry
#define AP_MAX_META_NAME 200
#define AP_MAX_META_VALUE 4096

// ---------------------------------------------------------------------------------------
//  Parsing

typedef struct {
    uint16_t tag;
    uint32_t len;
    const uint8_t *data;
} ap_field_t;

typedef struct {
    uint8_t type;
    uint64_t id;
    size_t n;             //  fields parsed
    ap_field_t *f;        //  caller's array of cap fields
    size_t cap;
} ap_msg_t;

//  Parse one datagram. msg->f and msg->cap must be set. Returns 0, or -1 if it is not a
//  well-formed message of this version (bad magic, version, length, too many fields).
int ap_parse(const void *buf, size_t len, ap_msg_t *msg);
//  Parse a run of fields (a nested field's data). Returns the count, or -1.
int ap_parse_fields(const uint8_t *data, size_t len, ap_field_t *out, size_t cap);

//  The first field with tag, or NULL.
const ap_field_t *ap_get(const ap_field_t *f, size_t n, uint16_t tag);
//  Typed views of a field; false (or NULL) if the field is absent or malformed.
bool ap_u32(const ap_field_t *f, uint32_t *out);
bool ap_u64(const ap_field_t *f, uint64_t *out);
const char *ap_str(const ap_field_t *f);
//  Shorthands: the first field of tag, typed. ap_get_u32 leaves *out alone when absent.
bool ap_get_u32(const ap_msg_t *m, uint16_t tag, uint32_t *out);
const char *ap_get_str(const ap_msg_t *m, uint16_t tag);

// ---------------------------------------------------------------------------------------
//  Building

typedef struct {
    uint8_t *buf;
    size_t len, cap;
    bool overflow;  //  something did not fit: ap_end() returns 0
} ap_writer_t;

void ap_begin(ap_writer_t *w, void *buf, size_t cap, uint8_t type, uint64_t id);
void ap_put_u32(ap_writer_t *w, uint16_t tag, uint32_t v);
void ap_put_u64(ap_writer_t *w, uint16_t tag, uint64_t v);
void ap_put_str(ap_writer_t *w, uint16_t tag, const char *s);  //  NULL: nothing
void ap_put_bytes(ap_writer_t *w, uint16_t tag, const void *p, size_t n);
//  A nested field: ap_nest_begin returns a mark to give ap_nest_end.
size_t ap_nest_begin(ap_writer_t *w, uint16_t tag);
void ap_nest_end(ap_writer_t *w, size_t mark);
//  Bytes written so far would be a complete message of this length; 0 on overflow.
size_t ap_end(ap_writer_t *w);
//  Undo to a length returned by ap_mark (for "does one more entry fit").
static inline size_t ap_mark(const ap_writer_t *w) { return w->len; }
void ap_rewind(ap_writer_t *w, size_t mark);

// ---------------------------------------------------------------------------------------
//  kbridge-side decoding of what the agent sends. Every helper returns 0 or -1 (reject the
//  message); strings returned point into the message.

typedef struct {
    const char *name, *path, *symlink_target, *owner, *group;
    uint32_t type, target_type, mode, uid, gid;
    uint64_t size;
    int64_t mtime_ns;
    const char *meta[2 * AP_MAX_META + 1];  //  name, value, ..., NULL
} ap_entry_t;

//  One APT_ENTRY field. fields: scratch of AP_MAX_FIELDS.
int ap_decode_entry(const ap_field_t *entry, ap_field_t *scratch, size_t cap, ap_entry_t *out);
//  AP_HELLO: err (0 or negative KB_), why (may be NULL), pid inside.
int ap_decode_hello(const ap_msg_t *m, int *err, const char **why, int *pid);
//  AP_ERROR / AP_WATCH_END: err < 0 (a code kbridge knows; else -1), why (never NULL).
int ap_decode_error(const ap_msg_t *m, int *err, const char **why);
//  AP_SPAWNED: pid > 0, flags, and how many fds must have come with it.
int ap_decode_spawned(const ap_msg_t *m, int *pid, uint32_t *flags, int *nfds);
//  AP_EXIT: pid, status (a valid wait status: exited or signalled).
int ap_decode_exit(const ap_msg_t *m, int *pid, int *status);
//  AP_WATCH_EVENT: type 1..5, name (relative, no "..", no leading '/'), is_dir.
int ap_decode_event(const ap_msg_t *m, int *type, const char **name, bool *is_dir);
//  A negative KB_ code that kbridge knows, from the wire (else KB_EIO).
int ap_err_from_wire(uint32_t v);

#endif
