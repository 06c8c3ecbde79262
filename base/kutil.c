/*  kutil - ids, clocks and string helpers. */
#include "kutil.h"

#include <ctype.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

void kb_uuid4(char out[37])
{
    unsigned char b[16];
    randombytes_buf(b, sizeof b);
    b[6] = (unsigned char) ((b[6] & 0x0f) | 0x40);
    b[8] = (unsigned char) ((b[8] & 0x3f) | 0x80);
    snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
             b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12],
             b[13], b[14], b[15]);
}

void kb_now_iso(char out[32])
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    size_t n = strftime(out, 32, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, 32 - n, ".%06dZ", (int) (ts.tv_nsec / 1000) % 1000000);
}

uint64_t kb_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t) ts.tv_sec * 1000u + (uint64_t) ts.tv_nsec / 1000000u;
}

void kb_random_hex(char *out, size_t nbytes)
{
    unsigned char b[64];
    size_t done = 0;
    while (done < nbytes) {
        size_t n = nbytes - done < sizeof b ? nbytes - done : sizeof b;
        randombytes_buf(b, n);
        sodium_bin2hex(out + 2 * done, 2 * n + 1, b, n);
        done += n;
    }
    out[2 * nbytes] = '\0';
}

char *kb_strdup(const char *s)
{
    return s ? strdup(s) : NULL;
}

int kb_is_kernel_id(const char *s)
{
    int groups = 0, len = 0;
    for (;; s++) {
        if (*s == '-' || *s == '\0') {
            if (len == 0) return 0;
            groups++;
            len = 0;
            if (*s == '\0') break;
        } else if (isalnum((unsigned char) *s) || *s == '_') {
            len++;
        } else {
            return 0;
        }
    }
    return groups == 5;
}
