/*  Unit tests: hmac signing, verification, tampering, short and replayed signatures. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "kernelmgr/hmac.h"
#include "base/kberr.h"

#include <stdio.h>
#include <string.h>

static const char *P[4] = {"{\"msg_id\":\"a\"}", "{}", "{}", "{\"code\":\"1+1\"}"};

static void s_parts(const void *parts[4], size_t lens[4])
{
    for (int i = 0; i < 4; i++) {
        parts[i] = P[i];
        lens[i] = strlen(P[i]);
    }
}

//  HMAC-SHA256("key", "The quick brown fox jumps over the lazy dog") split across the parts
//  still equals the one-shot value (RFC test vector from Wikipedia).
static void test_known_vector(void **state)
{
    (void) state;
    hmac_t *h = hmac_new("hmac-sha256", "key", 3, NULL);
    assert_non_null(h);
    const char *msg = "The quick brown fox jumps over the lazy dog";
    const void *parts[4] = {msg, msg + 10, msg + 20, msg + 30};
    size_t lens[4] = {10, 10, 10, strlen(msg) - 30};
    char sig[HMAC_HEX_MAX + 1];
    assert_int_equal(hmac_sign(h, parts, lens, sig), 64);
    assert_string_equal(sig, "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8");
    hmac_destroy(&h);
    assert_null(h);
}

static void test_long_key_sha512(void **state)
{
    (void) state;
    char key[200];
    memset(key, 'k', sizeof key);
    hmac_t *h = hmac_new("hmac-sha512", key, sizeof key, NULL);
    assert_non_null(h);
    const void *parts[4];
    size_t lens[4];
    s_parts(parts, lens);
    char sig[HMAC_HEX_MAX + 1];
    assert_int_equal(hmac_sign(h, parts, lens, sig), 128);
    assert_int_equal(hmac_verify(h, sig, 128, parts, lens, 1), KB_OK);
    hmac_destroy(&h);
}

//  Keys at and around the block sizes (a longer key is hashed first, RFC 2104), both
//  schemes, against Python's hmac module.
static void test_key_lengths_vectors(void **state)
{
    (void) state;
    static const struct {
        const char *scheme;
        size_t keylen;
        const char *hex;
    } v[] = {
        {"hmac-sha256", 64, "41556f5e91b94416d8dbf5110deb0e42e1afe298b7aacfb9085aa05650e65552"},
        {"hmac-sha256", 65, "536ef4d7f5f9ef5070e3327631b46864226478d01248a30945373223f93fa0d1"},
        {"hmac-sha512", 200, "8534be06f8ca4ae36bbe76f270b57baa379ea0ab7ae1c56e881c873ca8fb74ee"
                             "3999c474f23a6b9d23e5deec2cf84438ec3c76ae84aa2d81b7705b621f11e654"},
        {"hmac-sha512", 128, "422cad32fc40840fdb1cb523afecda85b1957aa4d3936ce20516e32df29d50d6"
                             "65ab7b03e4a7829afecbb079daa58fdf2e71d53df48a8a67989c44a2e28de451"},
        {"hmac-sha512", 129, "dfd397a97eca59fe3f438fe2253cb45d7e430e01d37b7787f5f2fd5df4efdc06"
                             "f3f6bbfca48650c6c4cff72067a30f59666960ed92a07d484d46c7c5a2dce442"},
    };
    char key[200];
    memset(key, 'k', sizeof key);
    const void *parts[4];
    size_t lens[4];
    s_parts(parts, lens);
    for (size_t i = 0; i < sizeof v / sizeof *v; i++) {
        hmac_t *h = hmac_new(v[i].scheme, key, v[i].keylen, NULL);
        assert_non_null(h);
        char sig[HMAC_HEX_MAX + 1];
        //  Twice: each message starts again from the keyed state.
        for (int round = 0; round < 2; round++) {
            assert_int_equal(hmac_sign(h, parts, lens, sig), strlen(v[i].hex));
            assert_string_equal(sig, v[i].hex);
        }
        hmac_destroy(&h);
    }
    hmac_t *h = hmac_new("hmac-sha512", "key", 3, NULL);
    char sig[HMAC_HEX_MAX + 1];
    hmac_sign(h, parts, lens, sig);
    assert_string_equal(sig, "9f43dfb268be5111eae2486a4135163d316c1445463e75ae2f14743619c6ea46"
                             "d894db9eade20930710b1afec578e7cdb000ea86f3b4cb8bdda0f14c3b9a41b8");
    hmac_destroy(&h);
}

static void test_tampered_short_replayed(void **state)
{
    (void) state;
    const char *key = "0b13b46b-e5ef6f6c8045d1580c9e4d54";
    hmac_t *h = hmac_new("hmac-sha256", key, strlen(key), NULL);
    const void *parts[4];
    size_t lens[4];
    s_parts(parts, lens);
    char sig[HMAC_HEX_MAX + 1];
    hmac_sign(h, parts, lens, sig);

    //  Short, long and empty signatures are refused by length.
    assert_int_equal(hmac_verify(h, sig, 63, parts, lens, 1), KB_EAUTH);
    assert_int_equal(hmac_verify(h, "", 0, parts, lens, 1), KB_EAUTH);
    char longer[80];
    memset(longer, 'a', sizeof longer);
    assert_int_equal(hmac_verify(h, longer, sizeof longer, parts, lens, 1), KB_EAUTH);
    //  A changed byte in the signature or in any signed part is refused.
    char bad[65];
    memcpy(bad, sig, 65);
    bad[10] = bad[10] == 'a' ? 'b' : 'a';
    assert_int_equal(hmac_verify(h, bad, 64, parts, lens, 1), KB_EAUTH);
    const char *tampered = "{\"code\":\"1+2\"}";
    const void *tparts[4] = {parts[0], parts[1], parts[2], tampered};
    assert_int_equal(hmac_verify(h, sig, 64, tparts, lens, 1), KB_EAUTH);
    //  Uppercase hex is not what Jupyter sends.
    char upper[65];
    for (int i = 0; i < 65; i++) upper[i] = (char) (sig[i] >= 'a' && sig[i] <= 'f' ? sig[i] - 32 : sig[i]);
    assert_int_equal(hmac_verify(h, upper, 64, parts, lens, 1), KB_EAUTH);
    //  The genuine one passes once; the same frames again are a replay.
    assert_int_equal(hmac_verify(h, sig, 64, parts, lens, 1), KB_OK);
    assert_int_equal(hmac_verify(h, sig, 64, parts, lens, 1), KB_EAUTH);
    hmac_stats_t st;
    hmac_stats(h, &st);
    assert_int_equal(st.verified, 1);
    assert_int_equal(st.replayed, 1);
    assert_int_equal(st.bad_length, 3);
    assert_int_equal(st.bad_signature, 3);
    hmac_destroy(&h);
}

static void test_replay_memory_rolls_over(void **state)
{
    (void) state;
    hmac_t *h = hmac_new("hmac-sha256", "k", 1, NULL);
    char body[32], sig[HMAC_HEX_MAX + 1];
    //  Many distinct messages are all accepted, and a recent one is still remembered.
    for (int i = 0; i < 70000; i++) {
        int n = snprintf(body, sizeof body, "{\"n\":%d}", i);
        const void *parts[4] = {body, "{}", "{}", "{}"};
        size_t lens[4] = {(size_t) n, 2, 2, 2};
        hmac_sign(h, parts, lens, sig);
        assert_int_equal(hmac_verify(h, sig, 64, parts, lens, 1), KB_OK);
    }
    int n = snprintf(body, sizeof body, "{\"n\":%d}", 69999);
    const void *parts[4] = {body, "{}", "{}", "{}"};
    size_t lens[4] = {(size_t) n, 2, 2, 2};
    hmac_sign(h, parts, lens, sig);
    assert_int_equal(hmac_verify(h, sig, 64, parts, lens, 1), KB_EAUTH);
    hmac_destroy(&h);
}

static void test_schemes(void **state)
{
    (void) state;
    int err = 0;
    assert_null(hmac_new("hmac-md5", "k", 1, &err));
    assert_int_equal(err, KB_ESCHEME);
    assert_null(hmac_new("hmac-sha257", "", 0, &err));
    assert_int_equal(err, KB_ESCHEME);
    //  An empty key signs nothing and checks nothing (the Jupyter convention).
    hmac_t *h = hmac_new("hmac-sha256", "", 0, &err);
    assert_non_null(h);
    assert_false(hmac_enabled(h));
    const void *parts[4];
    size_t lens[4];
    s_parts(parts, lens);
    char sig[HMAC_HEX_MAX + 1];
    assert_int_equal(hmac_sign(h, parts, lens, sig), 0);
    assert_string_equal(sig, "");
    assert_int_equal(hmac_verify(h, "", 0, parts, lens, 1), KB_OK);
    hmac_destroy(&h);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_known_vector),
        cmocka_unit_test(test_long_key_sha512),
        cmocka_unit_test(test_key_lengths_vectors),
        cmocka_unit_test(test_tampered_short_replayed),
        cmocka_unit_test(test_replay_memory_rolls_over),
        cmocka_unit_test(test_schemes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
