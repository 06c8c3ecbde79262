/*  libFuzzer target: client frames on the Jupyter kernel WebSocket, both framings.

    The first byte picks the protocol and frame type; the rest is the frame. Decoded
    messages are re-encoded for the client, exercising both directions.
*/
#include "bridge/jupyter/wsframing.h"
#include "bridge/buf/wbuf.h"

#include <stdint.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    wsframing_proto_t proto = (data[0] & 1) ? WSFRAMING_V1 : WSFRAMING_LEGACY;
    bool binary = (data[0] & 2) != 0;
    kchan_type_t channel;
    char why[200];
    kmsg_t *msg = wsframing_decode(proto, (const char *) data + 1, size - 1, binary, &channel, why, sizeof why);
    if (msg) {
        size_t len;
        bool bin;
        char *out = wsframing_encode(data[0] & 4 ? WSFRAMING_V1 : WSFRAMING_LEGACY, channel, msg, &len, &bin);
        wbuf_free(out);
        kmsg_destroy(&msg);
    }
    return 0;
}
