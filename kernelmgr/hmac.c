/*  hmac - HMAC-SHA256/512 signing and verification with replay protection. */
#include "hmac.h"
#include "../base/kberr.h"

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>

//  Replay memory: two generations of open-addressed sets of 64-bit digest prefixes. When
//  the current generation fills, it becomes the previous one and a fresh one starts, so
//  between GEN_CAP and 2 * GEN_CAP recent signatures are always remembered (jupyter_client
//  keeps up to 65536). Tables start small and grow with traffic.
#define GEN_CAP 32768

typedef struct {
    uint64_t *slots;
    size_t size;  //  power of two, or 0 before first use
    size_t count;
} digest_set_t;

typedef enum { SCHEME_NONE, SCHEME_SHA256, SCHEME_SHA512 } scheme_t;

struct _hmac_t {
    scheme_t scheme;
    //  Keyed once: OpenSSL keeps the key's inner and outer pads hashed, and re-initializing
    //  the context restarts from them, so a message costs its own bytes plus two blocks
    //  (libsodium rehashes the key for every message and its portable SHA-2 is ~4x slower).
    EVP_MAC_CTX *ctx;
    size_t maclen;
    digest_set_t gen[2];  //  gen[0] current, gen[1] previous
    hmac_stats_t stats;
};

static void s_set_free(digest_set_t *set)
{
    free(set->slots);
    memset(set, 0, sizeof *set);
}

static int s_set_contains(const digest_set_t *set, uint64_t key)
{
    if (!set->size) return 0;
    size_t mask = set->size - 1;
    for (size_t i = (size_t) (key * 0x9E3779B97F4A7C15ull) & mask;; i = (i + 1) & mask) {
        if (set->slots[i] == 0) return 0;
        if (set->slots[i] == key) return 1;
    }
}

static int s_set_insert(digest_set_t *set, uint64_t key)
{
    if ((set->count + 1) * 2 > set->size) {
        size_t size = set->size ? set->size * 2 : 64;
        uint64_t *slots = calloc(size, sizeof *slots);
        if (!slots) return KB_ENOMEM;
        for (size_t i = 0; i < set->size; i++) {
            uint64_t k = set->slots[i];
            if (!k) continue;
            size_t j = (size_t) (k * 0x9E3779B97F4A7C15ull) & (size - 1);
            while (slots[j]) j = (j + 1) & (size - 1);
            slots[j] = k;
        }
        free(set->slots);
        set->slots = slots;
        set->size = size;
    }
    size_t mask = set->size - 1;
    size_t i = (size_t) (key * 0x9E3779B97F4A7C15ull) & mask;
    while (set->slots[i]) i = (i + 1) & mask;
    set->slots[i] = key;
    set->count++;
    return KB_OK;
}

hmac_t *hmac_new(const char *scheme, const char *key, size_t keylen, int *err)
{
    int dummy;
    if (!err) err = &dummy;
    *err = KB_OK;
    if (sodium_init() < 0) {
        *err = KB_ENOMEM;
        return NULL;
    }
    //  The scheme is checked even when the key is empty, so a typo in a connection file
    //  is a clear startup error rather than silently unsigned traffic.
    scheme_t kind;
    if (scheme && strcmp(scheme, "hmac-sha256") == 0)
        kind = SCHEME_SHA256;
    else if (scheme && strcmp(scheme, "hmac-sha512") == 0)
        kind = SCHEME_SHA512;
    else if ((!scheme || !*scheme) && keylen == 0)
        kind = SCHEME_NONE;
    else {
        *err = KB_ESCHEME;
        return NULL;
    }
    if (keylen == 0) kind = SCHEME_NONE;
    hmac_t *self = calloc(1, sizeof *self);
    if (!self) {
        *err = KB_ENOMEM;
        return NULL;
    }
    self->scheme = kind;
    self->maclen = kind == SCHEME_SHA512 ? 64 : kind == SCHEME_SHA256 ? 32 : 0;
    if (kind != SCHEME_NONE) {
        EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
        self->ctx = mac ? EVP_MAC_CTX_new(mac) : NULL;
        EVP_MAC_free(mac);  //  the context holds its own reference
        OSSL_PARAM params[2] = {
            OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST,
                                             kind == SCHEME_SHA512 ? "SHA512" : "SHA256", 0),
            OSSL_PARAM_construct_end()};
        if (!self->ctx ||
            !EVP_MAC_init(self->ctx, (const unsigned char *) key, keylen, params)) {
            EVP_MAC_CTX_free(self->ctx);
            free(self);
            *err = KB_ENOMEM;
            return NULL;
        }
    }
    return self;
}

void hmac_destroy(hmac_t **self_p)
{
    if (!self_p || !*self_p) return;
    hmac_t *self = *self_p;
    EVP_MAC_CTX_free(self->ctx);  //  OpenSSL cleanses the key material it holds
    s_set_free(&self->gen[0]);
    s_set_free(&self->gen[1]);
    free(self);
    *self_p = NULL;
}

int hmac_enabled(const hmac_t *self)
{
    return self->scheme != SCHEME_NONE;
}

//  Returns 0, or KB_ENOMEM if OpenSSL failed (it does not for valid inputs).
static int s_mac(hmac_t *self, const void *const parts[4], const size_t lens[4],
                 unsigned char *mac)
{
    //  A NULL key re-initializes from the pads computed at hmac_new (no allocation).
    size_t out = 0;
    if (!EVP_MAC_init(self->ctx, NULL, 0, NULL)) return KB_ENOMEM;
    for (int i = 0; i < 4; i++)
        if (lens[i] && !EVP_MAC_update(self->ctx, parts[i], lens[i])) return KB_ENOMEM;
    if (!EVP_MAC_final(self->ctx, mac, &out, 64) || out != self->maclen) return KB_ENOMEM;
    return KB_OK;
}

size_t hmac_sign(hmac_t *self, const void *const parts[4], const size_t lens[4], char *out)
{
    if (self->scheme == SCHEME_NONE) {
        out[0] = '\0';
        return 0;
    }
    unsigned char mac[64];
    if (s_mac(self, parts, lens, mac) != KB_OK) {
        out[0] = '\0';  //  an empty signature: the peer refuses it, nothing is forged
        return 0;
    }
    sodium_bin2hex(out, HMAC_HEX_MAX + 1, mac, self->maclen);
    return self->maclen * 2;
}

int hmac_verify(hmac_t *self, const void *sig, size_t siglen, const void *const parts[4],
                const size_t lens[4], int remember)
{
    if (self->scheme == SCHEME_NONE) {
        self->stats.verified++;
        return KB_OK;
    }
    //  Length first: a short or long frame is refused before any comparison, so the
    //  constant-time compare below never reads past either buffer.
    if (siglen != self->maclen * 2) {
        self->stats.bad_length++;
        return KB_EAUTH;
    }
    unsigned char mac[64];
    char hex[HMAC_HEX_MAX + 1];
    if (s_mac(self, parts, lens, mac) != KB_OK) {
        self->stats.bad_signature++;
        return KB_EAUTH;
    }
    sodium_bin2hex(hex, sizeof hex, mac, self->maclen);
    if (sodium_memcmp(hex, sig, siglen) != 0) {
        self->stats.bad_signature++;
        return KB_EAUTH;
    }
    uint64_t key;
    memcpy(&key, mac, sizeof key);
    if (key == 0) key = 1;  //  0 marks an empty slot
    if (s_set_contains(&self->gen[0], key) || s_set_contains(&self->gen[1], key)) {
        self->stats.replayed++;
        return KB_EAUTH;
    }
    if (remember) {
        if (self->gen[0].count >= GEN_CAP) {
            s_set_free(&self->gen[1]);
            self->gen[1] = self->gen[0];
            memset(&self->gen[0], 0, sizeof self->gen[0]);
        }
        s_set_insert(&self->gen[0], key);
    }
    self->stats.verified++;
    return KB_OK;
}

void hmac_stats(const hmac_t *self, hmac_stats_t *stats)
{
    *stats = self->stats;
}
