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
        default: abort();
        }
    }
    nmsg_free(&m);
    free(msg);
    return 0;
}
