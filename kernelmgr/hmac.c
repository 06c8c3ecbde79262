/*  hmac - HMAC-SHA256/512 signing and verification with replay protection. */
#include "hmac.h"
#include "../base/kberr.h"

//  SHA256_CTX/SHA512_CTX are deprecated in OpenSSL 3.0 but still there, and they are the
//  only way it offers to copy a keyed digest state without an allocation: the EVP layer
//  frees and re-allocates the provider's context on every EVP_MD_CTX_copy_ex, which is what
//  EVP_MAC re-initialization does twice per message (a fifth of the MAC's time on the
//  small messages of a cell).
#define OPENSSL_SUPPRESS_DEPRECATED
#include <openssl/crypto.h>
#include <openssl/sha.h>
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

typedef union {
    SHA256_CTX s256;
    SHA512_CTX s512;
} sha_state_t;

struct _hmac_t {
    scheme_t scheme;
    //  Keyed once (RFC 2104): the digest states after the key's inner and outer pads are
    //  kept, and a message starts from plain copies of them, so it costs its own bytes
    //  plus two blocks (libsodium rehashes the key for every message and its portable
    //  SHA-2 is ~4x slower than OpenSSL's).
    sha_state_t inner, outer;
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
        //  A key longer than the digest's block is replaced by its digest (RFC 2104 2.).
        size_t block = kind == SCHEME_SHA512 ? SHA512_CBLOCK : SHA256_CBLOCK;
        unsigned char k0[SHA512_CBLOCK] = {0}, pad[SHA512_CBLOCK];
        if (keylen > block) {
            if (kind == SCHEME_SHA512) SHA512((const unsigned char *) key, keylen, k0);
            else SHA256((const unsigned char *) key, keylen, k0);
        } else {
            memcpy(k0, key, keylen);
        }
        for (int half = 0; half < 2; half++) {
            unsigned char x = half ? 0x5c : 0x36;
            for (size_t i = 0; i < block; i++) pad[i] = k0[i] ^ x;
            sha_state_t *st = half ? &self->outer : &self->inner;
            if (kind == SCHEME_SHA512) {
                SHA512_Init(&st->s512);
                SHA512_Update(&st->s512, pad, block);
            } else {
                SHA256_Init(&st->s256);
                SHA256_Update(&st->s256, pad, block);
            }
        }
        OPENSSL_cleanse(k0, sizeof k0);
        OPENSSL_cleanse(pad, sizeof pad);
    }
    return self;
}

void hmac_destroy(hmac_t **self_p)
{
    if (!self_p || !*self_p) return;
    hmac_t *self = *self_p;
    OPENSSL_cleanse(&self->inner, sizeof self->inner);  //  key-equivalent states
    OPENSSL_cleanse(&self->outer, sizeof self->outer);
    s_set_free(&self->gen[0]);
    s_set_free(&self->gen[1]);
    free(self);
    *self_p = NULL;
}

int hmac_enabled(const hmac_t *self)
{
    return self->scheme != SCHEME_NONE;
}

//  The MAC of parts[0..3] into mac (maclen bytes). Returns 0.
static int s_mac(hmac_t *self, const void *const parts[4], const size_t lens[4],
                 unsigned char *mac)
{
    sha_state_t st;
    unsigned char inner[SHA512_DIGEST_LENGTH];
    if (self->scheme == SCHEME_SHA512) {
        st.s512 = self->inner.s512;
        for (int i = 0; i < 4; i++)
            if (lens[i]) SHA512_Update(&st.s512, parts[i], lens[i]);
        SHA512_Final(inner, &st.s512);
        st.s512 = self->outer.s512;
        SHA512_Update(&st.s512, inner, SHA512_DIGEST_LENGTH);
        SHA512_Final(mac, &st.s512);
    } else {
        st.s256 = self->inner.s256;
        for (int i = 0; i < 4; i++)
            if (lens[i]) SHA256_Update(&st.s256, parts[i], lens[i]);
        SHA256_Final(inner, &st.s256);
        st.s256 = self->outer.s256;
        SHA256_Update(&st.s256, inner, SHA256_DIGEST_LENGTH);
        SHA256_Final(mac, &st.s256);
    }
    OPENSSL_cleanse(&st, sizeof st);
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
