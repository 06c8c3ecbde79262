/*  Unit tests: raw JSON fragments (locate members, validate strings, ASCII escaping). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "base/kberr.h"
#include "kernelmgr/jraw.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static jraw_t R(const char *s)
{
    jraw_t r = {s, strlen(s)};
    return r;
}

static bool s_valid_n(const char *s, size_t n)
{
    jraw_t r = {s, n};
    return jraw_string_valid(r);
}

static void test_string_validation_agrees_with_jansson(void **state)
{
    (void) state;
    //  Every offset of an offending byte inside runs long enough to use the 32-byte (two
    //  blocks) and 8-byte paths.
    char buf[112];
    for (size_t len = 0; len < 100; len++) {
        buf[0] = '"';
        memset(buf + 1, 'a', len);
        buf[len + 1] = '"';
        assert_true(s_valid_n(buf, len + 2));
        for (size_t at = 1; at <= len; at++) {
            const unsigned char bad[] = {'"', '\\', 0x01, 0x1f, 0x80, 0xff, 0xc0};
            for (size_t b = 0; b < sizeof bad; b++) {
                char saved = buf[at];
                buf[at] = (char) bad[b];
                assert_false(s_valid_n(buf, len + 2));
                buf[at] = saved;
            }
            char saved = buf[at];
            buf[at] = 0x7f;  //  DEL is legal in a JSON string
            assert_true(s_valid_n(buf, len + 2));
            buf[at] = saved;
        }
    }
    assert_true(jraw_string_valid(R("\"a\\\"b\\\\c\\/\\b\\f\\n\\r\\t\\u00e9\\uD83D\\uDE00\"")));
    assert_false(jraw_string_valid(R("\"\\x\"")));
    assert_false(jraw_string_valid(R("\"\\u12g4\"")));
    assert_false(jraw_string_valid(R("\"\\u12\"")));
    assert_false(jraw_string_valid(R("\"abc\\\"")));  //  the closing quote is escaped
    assert_false(jraw_string_valid(R("\"abc")));
    assert_false(jraw_string_valid(R("abc\"")));
    assert_true(jraw_string_valid(R("\"\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\"")));
    assert_false(jraw_string_valid(R("\"\xc3\"")));           //  truncated
    assert_false(jraw_string_valid(R("\"\xe2\x82\"")));       //  truncated
    assert_false(jraw_string_valid(R("\"\xc1\xbf\"")));       //  overlong
    assert_false(jraw_string_valid(R("\"\xe0\x80\xaf\"")));   //  overlong
    assert_false(jraw_string_valid(R("\"\xed\xa0\x80\"")));   //  a UTF-8 encoded surrogate
    assert_false(jraw_string_valid(R("\"\xf4\x90\x80\x80\""))); //  above U+10FFFF
    assert_false(jraw_string_valid(R("\"a\nb\"")));           //  raw newline
    //  Surrogate escapes must pair: jansson refuses a lone one, so splicing it would
    //  hand clients a document their parser rejects.
    assert_false(jraw_string_valid(R("\"\\ud800\"")));
    assert_false(jraw_string_valid(R("\"\\udc00\"")));
    assert_false(jraw_string_valid(R("\"\\ud800x\"")));
    assert_false(jraw_string_valid(R("\"\\ud800\\u0041\"")));
    assert_false(jraw_string_valid(R("\"\\ud800\\ud800\"")));
    assert_true(jraw_string_valid(R("\"\\uD800\\uDC00\"")));
}

//  Decode a sanitized token with jansson: it must parse, and give back expected.
static void s_check_sanitized(const char *token, const char *expected)
{
    jraw_t v = R(token);
    char *out = malloc(6 * v.len + 2 + 1);
    size_t n = jraw_sanitize_string(v, out);
    out[n] = '\0';
    jraw_t o = {out, n};
    assert_true(jraw_string_valid(o));
    char doc[512];
    snprintf(doc, sizeof doc, "[%s]", out);
    json_error_t err;
    json_t *arr = json_loads(doc, 0, &err);
    if (!arr) fail_msg("jansson refused %s: %s", out, err.text);
    assert_string_equal(json_string_value(json_array_get(arr, 0)), expected);
    json_decref(arr);
    free(out);
}

static void test_sanitize(void **state)
{
    (void) state;
    //  Valid content survives; only the broken parts become U+FFFD.
    s_check_sanitized("\"ok \\n \\u00e9 \\ud83d\\ude00\"", "ok \n \xc3\xa9 \xf0\x9f\x98\x80");
    s_check_sanitized("\"a\\ud800b\"", "a\xef\xbf\xbd" "b");
    s_check_sanitized("\"a\\udc00\"", "a\xef\xbf\xbd");
    s_check_sanitized("\"\\ud800\\ud800\\udc00\"", "\xef\xbf\xbd\xf0\x90\x80\x80");
    s_check_sanitized("\"x\xff\xc3y\"", "x\xef\xbf\xbd\xef\xbf\xbdy");
    s_check_sanitized("\"tab\there\x01\"", "tab\there\x01");
    s_check_sanitized("\"bad \\q escape\"", "bad \xef\xbf\xbdq escape");
    s_check_sanitized("\"short \\u12\"", "short \xef\xbf\xbd" "u12");
    s_check_sanitized("\"\xed\xa0\x80 enc surrogate\"", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd enc surrogate");
}

static void test_members(void **state)
{
    (void) state;
    jraw_t obj = R(" { \"name\" : \"stdout\", \"text\":\"a\\\"}b\", \"n\": [1, {\"x\": \"]\"}], "
                   "\"t\": true, \"num\": -1.5e3, \"esc\\u0061ped\": 1 } ");
    jraw_t v;
    assert_int_equal(jraw_member(obj, "text", &v), 0);
    assert_int_equal(v.len, strlen("\"a\\\"}b\""));
    assert_memory_equal(v.p, "\"a\\\"}b\"", v.len);
    assert_int_equal(jraw_member(obj, "n", &v), 0);
    assert_memory_equal(v.p, "[1, {\"x\": \"]\"}]", v.len);
    assert_int_equal(jraw_member(obj, "num", &v), 0);
    assert_memory_equal(v.p, "-1.5e3", v.len);
    assert_int_equal(jraw_member(obj, "escaped", &v), 0);  //  keys with escapes are decoded
    assert_int_equal(jraw_member(obj, "missing", &v), KB_ENOTFOUND);
    size_t pos = 0, count = 0;
    jraw_t k;
    while (jraw_next(obj, &pos, &k, &v) == 1) count++;
    assert_int_equal(count, 6);
    //  Malformed texts are refused, never overrun.
    const char *bad[] = {"", "[]", "{", "{\"a\"", "{\"a\":", "{\"a\":\"x", "{\"a\":[1,2}", "{a:1}", "{\"a\" 1}"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        assert_int_equal(jraw_member(R(bad[i]), "a", &v), KB_EPROTO);
    assert_int_equal(jraw_member(R("{}"), "a", &v), KB_ENOTFOUND);
}

static void test_status_fields(void **state)
{
    (void) state;
    jraw_t v;
    //  The last of duplicate keys wins, as in jansson; escaped values compare decoded.
    jraw_t obj = R("{\"execution_state\":\"busy\", \"execution_state\" : \"\\u0069dle\" } \n");
    assert_int_equal(jraw_member_last(obj, "execution_state", &v), 0);
    assert_true(jraw_string_is(v, "idle"));
    assert_false(jraw_string_is(v, "busy"));
    assert_false(jraw_string_is(R("idle"), "idle"));      //  not a string token
    assert_false(jraw_string_is(R("{idle}"), "idle"));
    assert_false(jraw_string_is(R("\"idle \""), "idle"));
    assert_int_equal(jraw_member_last(R("{\"a\":1}"), "b", &v), KB_ENOTFOUND);
    //  The whole top level must be one object: what jansson refuses is not read.
    const char *bad[] = {"{\"a\":1} x", "{\"a\":1}{}", "{\"a\":1,", "[\"a\"]", "{\"a\" 1}", ""};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        assert_int_equal(jraw_member_last(R(bad[i]), "a", &v), KB_EPROTO);

    int64_t n = 7;
    const char *ints[] = {"0", "-0", "42", "-17", "9223372036854775807", "-9223372036854775808"};
    const int64_t want[] = {0, 0, 42, -17, INT64_MAX, INT64_MIN};
    for (size_t i = 0; i < sizeof ints / sizeof *ints; i++) {
        assert_int_equal(jraw_int(R(ints[i]), &n), 0);
        assert_true(n == want[i]);
    }
    //  What jansson reads as a real, or refuses, is not an integer here either.
    const char *not_ints[] = {"", "-", "01", "-01", "1.0", "1e3", "1E3", "+1", "\"1\"", "true",
                              "null", "9223372036854775808", "-9223372036854775809", "1 ", "0x1"};
    for (size_t i = 0; i < sizeof not_ints / sizeof *not_ints; i++)
        assert_int_equal(jraw_int(R(not_ints[i]), &n), KB_EPROTO);
}

static void test_ascii(void **state)
{
    (void) state;
    const char *src = "{\"t\":\"h\xc3\xa9llo \xe2\x80\xa8 \xf0\x9f\x98\x80\"}";
    size_t n = jraw_ascii_len(src, strlen(src));
    char *out = malloc(n + 1);
    assert_int_equal(jraw_to_ascii(src, strlen(src), out), n);
    out[n] = '\0';
    assert_string_equal(out, "{\"t\":\"h\\u00e9llo \\u2028 \\ud83d\\ude00\"}");
    json_t *back = json_loads(out, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(back, "t")), "h\xc3\xa9llo \xe2\x80\xa8 \xf0\x9f\x98\x80");
    json_decref(back);
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_string_validation_agrees_with_jansson),
        cmocka_unit_test(test_sanitize),
        cmocka_unit_test(test_members),
        cmocka_unit_test(test_status_fields),
        cmocka_unit_test(test_ascii),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
