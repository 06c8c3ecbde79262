/*  hmac - signs and verifies Jupyter wire messages.

    The signature is the lowercase hex HMAC of the header, parent_header, metadata and
    content frames, in that order, keyed with the connection file's key as raw ASCII
    bytes. The MAC is OpenSSL libcrypto's (EVP_MAC, keyed once per signer); libsodium does the
    constant-time hex and compare.
    An empty key means messages are neither signed nor checked (the Jupyter convention).

    Verification checks the signature's length first, compares in constant time, and
    remembers recent digests so a replayed message is refused, as jupyter_client's
    Session does. Nothing here parses JSON: callers verify first, then parse.
*/
#ifndef HMAC_H
#define HMAC_H

#include <stddef.h>
#include <stdint.h>

typedef struct _hmac_t hmac_t;

//  Longest hex signature (sha512) without the terminating NUL.
#define HMAC_HEX_MAX 128

//  Create a signer for scheme ("hmac-sha256" or "hmac-sha512"; "" is accepted with an
//  empty key) and key (keylen bytes, copied). Returns NULL if the scheme is unsupported
//  (*err = KB_ESCHEME) or memory ran out. err may be NULL.
//  Caller owns return value and must destroy it when done.
hmac_t *hmac_new(const char *scheme, const char *key, size_t keylen, int *err);

//  Destroy the signer (the key is wiped). Nullifies *self_p.
void hmac_destroy(hmac_t **self_p);

//  True if this signer signs and checks messages (the key is not empty).
int hmac_enabled(const hmac_t *self);

//  Compute the signature of parts[0..3] into out, NUL-terminated. out must hold
//  HMAC_HEX_MAX + 1 bytes. Returns the hex length: 0 for an unsigned (empty-key) signer.
size_t hmac_sign(hmac_t *self, const void *const parts[4], const size_t lens[4], char *out);

//  Verify sig (siglen bytes, as received) against parts[0..3]. Returns 0, or KB_EAUTH for
//  a signature that is missing, of the wrong length, wrong, or already seen. A verified
//  signature is remembered (replay protection) only when remember is non-zero.
int hmac_verify(hmac_t *self, const void *sig, size_t siglen, const void *const parts[4],
                const size_t lens[4], int remember);

//  Counters of rejected messages, by cause.
typedef struct {
    uint64_t verified, bad_length, bad_signature, replayed;
} hmac_stats_t;
void hmac_stats(const hmac_t *self, hmac_stats_t *stats);

#endif
