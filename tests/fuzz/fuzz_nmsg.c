/*  libFuzzer target: the native API's op dispatch - a client's /ws message to an op and
    its checked fields (bridge/native/nmsg.c). The first byte says whether the message
    came as a binary frame; the rest is the message. What the parser accepts must hold
    up to what native.c then relies on, so that is asserted too.
*/
#include "bridge/apikit/envcheck.h"
#include "bridge/native/nmsg.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    bool binary = data[0] == 0xff;
    //  A copy of exactly the message, so ASan sees any read past its end.
    size_t len = size - 1;
    char *msg = malloc(len ? len : 1);
    if (!msg) return 0;
    memcpy(msg, data + 1, len);
    nmsg_t m;
    char why[512];
    memset(why, 0, sizeof why);
    int rc = nmsg_parse(msg, len, binary, &m, why, sizeof why);
    if (rc != 0) {
        //  Every refusal says why.
        if (!why[0] || !memchr(why, '\0', sizeof why)) abort();
    } else {
        if (binary || !m.id || !(json_is_string(m.id) || json_is_integer(m.id)) || !m.op_name) abort();
        const char *bad;
        char ewhy[256];
        switch (m.op) {
        case NMSG_EXECUTE:
            if (!m.code || strlen(m.code) != m.code_len || m.timeout_ms < 0) abort();
            if (envcheck(m.env_vars, &bad, ewhy, sizeof ewhy) != ENVCHECK_OK) abort();
            break;
        case NMSG_START_KERNEL:
            if (envcheck(m.env_vars, &bad, ewhy, sizeof ewhy) != ENVCHECK_OK) abort();
            break;
        case NMSG_INTERRUPT_KERNEL:
        case NMSG_RESTART_KERNEL:
        case NMSG_SHUTDOWN_KERNEL:
            if (!m.kernel_id) abort();
            break;
        case NMSG_KEEP_ALIVE:
            if (m.seconds < 0) abort();
            break;
        case NMSG_ACK:
            if (m.seq < 0) abort();
            break;
        case NMSG_LIST_KERNELS: break;
        case NMSG_PROCESS_START:
            if (!m.argv || !m.argv[0] || !m.argv[0][0] || m.timeout_ms < 0) abort();
            if (m.pty && (m.cols < 1 || m.cols > 65535 || m.rows < 1 || m.rows > 65535)) abort();
            if (m.user && strcmp(m.user, "root") != 0 && strcmp(m.user, "user") != 0) abort();
            if (envcheck(m.env_vars, &bad, ewhy, sizeof ewhy) != ENVCHECK_OK) abort();
            break;
        case NMSG_PROCESS_CONNECT:
        case NMSG_PROCESS_CLOSE_STDIN:
            if (m.pid <= 0 && !m.tag) abort();
            break;
        case NMSG_PROCESS_INPUT:
            if ((m.pid <= 0 && !m.tag) || !m.bytes) abort();
            break;
        case NMSG_PROCESS_SIGNAL:
            if ((m.pid <= 0 && !m.tag) || m.signo < 1 || m.signo > 64) abort();
            break;
        case NMSG_PROCESS_RESIZE:
            if ((m.pid <= 0 && !m.tag) || m.cols < 1 || m.rows < 1) abort();
            break;
        case NMSG_FILES_LIST:
        case NMSG_FILES_STAT:
        case NMSG_FILES_EXISTS:
        case NMSG_FILES_MAKE_DIR:
        case NMSG_FILES_WRITE:
        case NMSG_FILES_READ:
        case NMSG_FILES_REMOVE:
        case NMSG_FILES_RENAME:
        case NMSG_WATCH_START:
            //  A path reaches the agent as a C string: never empty, never cut by a NUL.
            if (!m.path || !*m.path || strlen(m.path) > NMSG_MAX_PATH || m.depth < 1) abort();
            if (m.op == NMSG_FILES_RENAME && (!m.new_path || !*m.new_path)) abort();
            if (m.op == NMSG_FILES_WRITE && !m.bytes) abort();
            break;
        case NMSG_WATCH_STOP:
            if (!m.watch_id) abort();
            break;
        case NMSG_SANDBOX_SET_TIMEOUT:
            if (m.timeout_ms < 0) abort();
            break;
        case NMSG_PROCESS_LIST:
        case NMSG_SANDBOX_INFO:
        case NMSG_SANDBOX_KILL: break;
        default: abort();
        }
    }
    nmsg_free(&m);
    free(msg);
    return 0;
}
