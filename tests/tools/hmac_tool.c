/*  hmac_tool - signs frames with kernelmgr/hmac for the Python compatibility test.

    usage: kb_hmac_tool SCHEME KEY_HEX PART0_HEX PART1_HEX PART2_HEX PART3_HEX
    Prints the hex signature (or an empty line for an empty key).
*/
#include "kernelmgr/hmac.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static unsigned char *s_unhex(const char *hex, size_t *len)
{
    size_t n = strlen(hex) / 2;
    unsigned char *out = malloc(n + 1);
    if (!out || sodium_hex2bin(out, n + 1, hex, strlen(hex), NULL, len, NULL) != 0) {
        free(out);
        return NULL;
    }
    return out;
}

int main(int argc, char **argv)
{
    if (argc != 7 || sodium_init() < 0) {
        fprintf(stderr, "usage: kb_hmac_tool SCHEME KEY_HEX P0 P1 P2 P3 (hex)\n");
        return 2;
    }
    size_t keylen;
    unsigned char *key = s_unhex(argv[2], &keylen);
    int err;
    hmac_t *hmac = key ? hmac_new(argv[1], (const char *) key, keylen, &err) : NULL;
    if (!hmac) {
        fprintf(stderr, "bad scheme or key\n");
        return 1;
    }
    unsigned char *parts[4];
    size_t lens[4];
    for (int i = 0; i < 4; i++)
        if (!(parts[i] = s_unhex(argv[3 + i], &lens[i]))) return 1;
    char sig[HMAC_HEX_MAX + 1];
    hmac_sign(hmac, (const void *const *) parts, lens, sig);
    printf("%s\n", sig);
    for (int i = 0; i < 4; i++) free(parts[i]);
    free(key);
    hmac_destroy(&hmac);
    return 0;
}
