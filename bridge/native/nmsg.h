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
} nmsg_op_t;

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
} nmsg_t;

//  Parse a message of len bytes (binary: it came in a binary frame). Returns 0, or
//  KB_EINVAL with the reason in why: refuse it as bad_request, to id when it is set,
//  otherwise with a null id. In both cases release with nmsg_free.
int nmsg_parse(const char *data, size_t len, bool binary, nmsg_t *out, char *why, size_t size);
void nmsg_free(nmsg_t *self);

#endif
