/*  nmsg - one client message of the /ws protocol, parsed and checked.

    Pure: no session, kernel or connection is touched, so the whole of what a client can
    say is fuzzed (tests/fuzz/fuzz_nmsg.c). Everything a request can get wrong by itself
    (JSON, id, op, field types, env_vars, a NUL in code) is found here and refused as
    bad_request; what depends on the server's state (an unknown kernel, a cap) is the
    caller's to find.
*/
#ifndef NMSG_H
#define NMSG_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum {
    NMSG_EXECUTE,
    NMSG_START_KERNEL,
    NMSG_LIST_KERNELS,
    NMSG_INTERRUPT_KERNEL,
    NMSG_RESTART_KERNEL,
    NMSG_SHUTDOWN_KERNEL,
    NMSG_KEEP_ALIVE,
    NMSG_ACK,
    //  processes in the attached sandbox
    NMSG_PROCESS_START,
    NMSG_PROCESS_CONNECT,
    NMSG_PROCESS_INPUT,
    NMSG_PROCESS_CLOSE_STDIN,
    NMSG_PROCESS_SIGNAL,
    NMSG_PROCESS_RESIZE,
    NMSG_PROCESS_LIST,
    //  files
    NMSG_FILES_LIST,
    NMSG_FILES_STAT,
    NMSG_FILES_EXISTS,
    NMSG_FILES_MAKE_DIR,
    NMSG_FILES_WRITE,
    NMSG_FILES_READ,
    NMSG_FILES_REMOVE,
    NMSG_FILES_RENAME,
    NMSG_WATCH_START,
    NMSG_WATCH_STOP,
    //  the sandbox
    NMSG_SANDBOX_INFO,
    NMSG_SANDBOX_SET_TIMEOUT,
    NMSG_SANDBOX_KILL,
} nmsg_op_t;

#define NMSG_MAX_ARGS 4096  //  argv entries of process_start
#define NMSG_MAX_PATH 4096  //  bytes of a path, NUL excluded

typedef struct {
    json_t *doc_;          //  private: the parsed message; the fields below borrow from it
    json_t *id;            //  the request id, NULL when an error cannot be addressed to one
    nmsg_op_t op;
    const char *op_name;   //  as sent
    //  execute: code (code_len bytes, no NUL), kernel_id?, env_vars?, timeout_ms (0: none)
    //  start_kernel: kernel_name?, cwd?, env_vars?
    //  interrupt/restart/shutdown_kernel: kernel_id
    const char *code;
    size_t code_len;
    const char *kernel_id, *kernel_name, *cwd;
    json_t *env_vars;      //  NULL, or an object of strings with valid names
    int64_t timeout_ms;
    int64_t seconds;       //  keep_alive, >= 0
    int64_t seq;           //  ack, >= 0
    //  process_start: argv (NULL-terminated, borrowed strings; from cmd as
    //  {"/bin/bash", "-l", "-c", cmd} or from args), cwd?, env_vars?, user ("root" or
    //  "user"; NULL: root), stdin_on, pty (cols, rows >= 1; 0 when not given: 80x24),
    //  tag?, timeout_ms (0: none), base64 (output as base64 "data" rather than "text")
    const char **argv;
    const char *user, *tag;
    bool stdin_on, pty, base64;
    int64_t cols, rows;
    //  process_*: the process, by pid (> 0) or tag (one of them is set)
    int64_t pid;
    //  process_signal: the signal number (1..64)
    int signo;
    //  process_input / files_write: the bytes (decoded from "data" base64 or "text";
    //  owned by the message), and files_read: base64 wanted
    char *bytes;
    size_t bytes_len;
    //  files_*: path (no NUL, at most NMSG_MAX_PATH bytes), new_path (rename), depth
    //  (list, >= 1, default 1), parents (make_dir), recursive (watch_start); watch_stop:
    //  watch_id
    const char *path, *new_path, *watch_id;
    int64_t depth;
    bool parents, recursive;
} nmsg_t;

//  Parse a message of len bytes (binary: it came in a binary frame). Returns 0, or
//  KB_EINVAL with the reason in why: refuse it as bad_request, to id when it is set,
//  otherwise with a null id. In both cases release with nmsg_free.
int nmsg_parse(const char *data, size_t len, bool binary, nmsg_t *out, char *why, size_t size);
void nmsg_free(nmsg_t *self);

#endif
