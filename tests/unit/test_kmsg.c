/*  Unit tests: wire decoding (delimiter search, verify-before-parse, malformed frames),
    encoding, and a kchan dropping forged messages from a fake kernel over real ZeroMQ. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "kernelmgr/kmsg.h"
#include "base/kberr.h"
#include "base/jx.h"
#include "kernelmgr/kchan.h"
#include "kernelmgr/zwatch.h"
#include "base/klog.h"

#include <string.h>

static const char *KEY = "0b13b46b-e5ef6f6c8045d1580c9e4d54";

static zmsg_t *s_wire(hmac_t *h, int nids, const char *parts[4], const char *sig_override,
                      int nbuffers)
{
    zmsg_t *z = zmsg_new();
    for (int i = 0; i < nids; i++) zmsg_addstrf(z, "identity-%d", i);
    zmsg_addstr(z, "<IDS|MSG>");
    const void *p[4];
    size_t l[4];
    for (int i = 0; i < 4; i++) {
        p[i] = parts[i];
        l[i] = strlen(parts[i]);
    }
    char sig[HMAC_HEX_MAX + 1];
    hmac_sign(h, p, l, sig);
    zmsg_addstr(z, sig_override ? sig_override : sig);
    for (int i = 0; i < 4; i++) zmsg_addstr(z, parts[i]);
    for (int i = 0; i < nbuffers; i++) zmsg_addmem(z, "\x00\x01\x02", 3);
    return z;
}

static const char *GOOD[4] = {
    "{\"msg_id\":\"m1\",\"msg_type\":\"stream\",\"session\":\"s\",\"username\":\"u\",\"version\":\"5.3\",\"date\":\"d\"}",
    "{\"msg_id\":\"parent-1\"}", "{}", "{\"name\":\"stdout\",\"text\":\"hi\\u0000there\\n\"}"};

static void test_decode_good_with_identities_and_buffers(void **state)
{
    (void) state;
    hmac_t *h = hmac_new("hmac-sha256", KEY, strlen(KEY), NULL);
    for (int nids = 0; nids < 3; nids++) {
        zmsg_t *z = s_wire(h, nids, GOOD, NULL, 2);
        int err;
        kmsg_t *m = kmsg_decode(&z, h, &err);
        assert_null(z);
        assert_non_null(m);
        assert_int_equal(err, KB_OK);
        assert_string_equal(kmsg_type(m), "stream");
        assert_string_equal(kmsg_id(m), "m1");
        assert_string_equal(kmsg_parent_id(m), "parent-1");
        //  \u0000 inside kernel output survives.
        json_t *text = json_object_get(kmsg_content(m), "text");
        assert_int_equal(json_string_length(text), 9);
        assert_int_equal(kmsg_buffer_count(m), 2);
        size_t len;
        const char *raw = kmsg_raw(m, KMSG_CONTENT, &len);
        assert_int_equal(len, strlen(GOOD[3]));
        assert_memory_equal(raw, GOOD[3], len);
        kmsg_destroy(&m);
        //  Each message verifies once: a new nids gives the same signature, so rebuild h.
        hmac_destroy(&h);
        h = hmac_new("hmac-sha256", KEY, strlen(KEY), NULL);
    }
    hmac_destroy(&h);
}

static void test_decode_rejects(void **state)
{
    (void) state;
    hmac_t *h = hmac_new("hmac-sha256", KEY, strlen(KEY), NULL);
    int err;
    //  No delimiter at all.
    zmsg_t *z = zmsg_new();
    zmsg_addstr(z, "just a frame");
    assert_null(kmsg_decode(&z, h, &err));
    assert_int_equal(err, KB_EPROTO);
    //  Too few frames after the delimiter.
    z = zmsg_new();
    zmsg_addstr(z, "<IDS|MSG>");
    zmsg_addstr(z, "sig");
    zmsg_addstr(z, "{}");
    assert_null(kmsg_decode(&z, h, &err));
    assert_int_equal(err, KB_EPROTO);
    //  Wrong and short signatures: KB_EAUTH, and nothing was parsed.
    z = s_wire(h, 1, GOOD, "deadbeef", 0);
    assert_null(kmsg_decode(&z, h, &err));
    assert_int_equal(err, KB_EAUTH);
    z = s_wire(h, 1, GOOD, "0000000000000000000000000000000000000000000000000000000000000000", 0);
    assert_null(kmsg_decode(&z, h, &err));
    assert_int_equal(err, KB_EAUTH);
    //  Correctly signed garbage is a protocol error, not a crash.
    const char *bad_json[4] = {"{not json", "{}", "{}", "{}"};
    z = s_wire(h, 0, bad_json, NULL, 0);
    assert_null(kmsg_decode(&z, h, &err));
    assert_int_equal(err, KB_EPROTO);
    const char *no_type[4] = {"{\"msg_id\":\"x\"}", "{}", "{}", "{}"};
    z = s_wire(h, 0, no_type, NULL, 0);
    assert_null(kmsg_decode(&z, h, &err));
    assert_int_equal(err, KB_EPROTO);
    const char *array_parent[4] = {GOOD[0], "[]", "{}", "{}"};
    z = s_wire(h, 0, array_parent, NULL, 0);
    assert_null(kmsg_decode(&z, h, &err));
    //  Replay of a genuine message.
    z = s_wire(h, 0, GOOD, NULL, 0);
    kmsg_t *m = kmsg_decode(&z, h, &err);
    assert_non_null(m);
    kmsg_destroy(&m);
    z = s_wire(h, 0, GOOD, NULL, 0);
    assert_null(kmsg_decode(&z, h, &err));
    assert_int_equal(err, KB_EAUTH);
    hmac_destroy(&h);
}

//  The routing fields are read by scanning the raw header (no jansson parse): they must be
//  what a parse gives - escapes decoded, the last of duplicate keys, a non-string field
//  absent - and a header that is not a whole object is refused.
static kmsg_t *s_decode_parts(hmac_t *h, const char *parts[4], int *err)
{
    zmsg_t *z = s_wire(h, 0, parts, NULL, 0);
    return kmsg_decode(&z, h, err);
}

static void test_decode_fields_by_scan(void **state)
{
    (void) state;
    hmac_t *h = hmac_new("hmac-sha256", KEY, strlen(KEY), NULL);
    int err;
    const char *p1[4] = {
        " {\"msg_id\" : \"m\\u0031\", \"nested\":{\"msg_type\":\"no\",\"a\":[1,{\"b\":\"}\"}]},"
        "\"msg_type\":\"first\",\"msg_type\":\"status\",\"session\":12,\"date\":\"2026-12-01T00:00:00.000001Z\"} ",
        "{\"date\":\"2026-11-30T23:59:59.999999Z\",\"msg_id\":\"p\\\"q\"}", "{}", "{\"execution_state\":\"idle\"}"};
    kmsg_t *m = s_decode_parts(h, p1, &err);
    assert_non_null(m);
    assert_string_equal(kmsg_id(m), "m1");
    assert_string_equal(kmsg_type(m), "status");
    assert_null(kmsg_session(m));
    assert_string_equal(kmsg_date(m), "2026-12-01T00:00:00.000001Z");
    assert_string_equal(kmsg_parent_id(m), "p\"q");
    assert_string_equal(kmsg_parent_date(m), "2026-11-30T23:59:59.999999Z");
    //  The same as jansson reads it.
    assert_string_equal(json_string_value(json_object_get(kmsg_header(m), "msg_id")), kmsg_id(m));
    kmsg_destroy(&m);
    //  A parent without msg_id: no parent id, still a message.
    const char *p2[4] = {GOOD[0], "{}", "{}", "{}"};
    m = s_decode_parts(h, p2, &err);
    assert_non_null(m);
    assert_null(kmsg_parent_id(m));
    assert_string_equal(kmsg_session(m), "s");
    kmsg_destroy(&m);
    //  Refused: text after the object, a broken string, msg_type not a string, a NUL.
    const char *bad[][4] = {
        {"{\"msg_id\":\"a\",\"msg_type\":\"b\"}x", "{}", "{}", "{}"},
        {"{\"msg_id\":\"a\",\"msg_type\":\"b\\q\"}", "{}", "{}", "{}"},
        {"{\"msg_id\":\"a\",\"msg_type\":7}", "{}", "{}", "{}"},
        {"{\"msg_id\":\"a\\u0000b\",\"msg_type\":\"b\"}", "{}", "{}", "{}"},
        {"{\"msg_id\":\"a\",\"msg_type\":\"b\"}", "{\"msg_id\":\"x\"", "{}", "{}"},
        {"{\"msg_id\":\"a\",\"msg_type\":\"b\"", "{}", "{}", "{}"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        m = s_decode_parts(h, bad[i], &err);
        assert_null(m);
        assert_int_equal(err, KB_EPROTO);
    }
    //  Fields too long for the inline store: read by parsing instead, same values.
    char longid[600], header[800];
    memset(longid, 'x', sizeof longid - 1);
    longid[sizeof longid - 1] = '\0';
    snprintf(header, sizeof header, "{\"msg_id\":\"%s\",\"msg_type\":\"stream\"}", longid);
    const char *p3[4] = {header, "{\"msg_id\":\"pp\"}", "{}", "{}"};
    m = s_decode_parts(h, p3, &err);
    assert_non_null(m);
    assert_string_equal(kmsg_id(m), longid);
    assert_string_equal(kmsg_parent_id(m), "pp");
    kmsg_destroy(&m);
    hmac_destroy(&h);
}

//  A raw NUL byte in the content (jansson would skip one after a number): not JSON for
//  the parse nor for the scan of its fields, so the two never disagree.
static void test_raw_nul_in_content_is_refused(void **state)
{
    (void) state;
    static const char num[] = "{\"status\":\"error\",\"execution_count\":1\0\n,\"x\":1}";
    static const char lit[] = "{\"a\":true\0}";
    assert_null(jx_loadb(num, sizeof num - 1, NULL));
    assert_null(jx_loadb(lit, sizeof lit - 1, NULL));
    hmac_t *h = hmac_new("hmac-sha256", KEY, strlen(KEY), NULL);
    const void *p[4] = {GOOD[0], GOOD[1], GOOD[2], num};
    size_t l[4] = {strlen(GOOD[0]), strlen(GOOD[1]), strlen(GOOD[2]), sizeof num - 1};
    char sig[HMAC_HEX_MAX + 1];
    hmac_sign(h, p, l, sig);
    zmsg_t *z = zmsg_new();
    zmsg_addstr(z, "<IDS|MSG>");
    zmsg_addstr(z, sig);
    for (int i = 0; i < 4; i++) zmsg_addmem(z, p[i], l[i]);
    int err;
    kmsg_t *m = kmsg_decode(&z, h, &err);
    assert_non_null(m);  //  the routing fields are fine; the content is not read until used
    assert_null(kmsg_content(m));
    jraw_t v;
    assert_int_equal(kmsg_content_member(m, "execution_count", &v), KB_EPROTO);
    assert_int_equal(kmsg_content_member(m, "status", &v), KB_EPROTO);
    kmsg_destroy(&m);
    hmac_destroy(&h);
}

//  A refusal's reason quotes the input; it stays ASCII, fit for a JSON reply, whatever
//  bytes the input had (fuzz_ereq: a 422 whose detail could not be built).
static void test_jx_refusal_reason_is_ascii(void **state)
{
    (void) state;
    static const char body[] = "\"\\\xe5\x88\x88\x88\x88";
    json_error_t e;
    assert_null(jx_loadb(body, sizeof body - 1, &e));
    assert_true(e.text[0]);
    for (const char *c = e.text; *c; c++)
        assert_true((unsigned char) *c >= 0x20 && (unsigned char) *c < 0x80);
    json_t *j = json_string(e.text);
    assert_non_null(j);
    json_decref(j);
}

//  Headers kbridge writes come from a template: valid JSON carrying the same fields, with
//  counter ids that never repeat, and dates that do not go backwards.
static void test_new_template_header(void **state)
{
    (void) state;
    char prev_id[200] = "", prev_date[40] = "";
    for (int i = 0; i < 50; i++) {
        kmsg_t *m = kmsg_new("execute_request", "sess-1", NULL);
        assert_non_null(m);
        json_t *hdr = kmsg_header(m);
        assert_true(json_is_object(hdr));
        assert_string_equal(json_string_value(json_object_get(hdr, "msg_id")), kmsg_id(m));
        assert_string_equal(json_string_value(json_object_get(hdr, "msg_type")), "execute_request");
        assert_string_equal(json_string_value(json_object_get(hdr, "session")), "sess-1");
        assert_string_equal(json_string_value(json_object_get(hdr, "version")), KMSG_PROTOCOL_VERSION);
        assert_string_equal(json_string_value(json_object_get(hdr, "date")), kmsg_date(m));
        assert_int_equal(strlen(kmsg_date(m)), 27);
        assert_string_not_equal(kmsg_id(m), prev_id);
        assert_true(strcmp(kmsg_date(m), prev_date) >= 0);
        snprintf(prev_id, sizeof prev_id, "%s", kmsg_id(m));
        snprintf(prev_date, sizeof prev_date, "%s", kmsg_date(m));
        assert_null(kmsg_parent_id(m));
        kmsg_destroy(&m);
    }
    //  A session that needs escaping takes the jansson path: still a valid header.
    kmsg_t *m = kmsg_new_id("status", "a\"b", "given-id", NULL);
    assert_non_null(m);
    assert_string_equal(kmsg_id(m), "given-id");
    assert_string_equal(kmsg_session(m), "a\"b");
    size_t len;
    const char *raw = kmsg_raw(m, KMSG_HEADER, &len);
    json_t *back = json_loadb(raw, len, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(back, "session")), "a\"b");
    json_decref(back);
    kmsg_destroy(&m);
}

static void test_encode_round_trip(void **state)
{
    (void) state;
    hmac_t *tx = hmac_new("hmac-sha256", KEY, strlen(KEY), NULL);
    hmac_t *rx = hmac_new("hmac-sha256", KEY, strlen(KEY), NULL);
    kmsg_t *m = kmsg_new("execute_request", "sess", json_pack("{s:s}", "code", "1+1"));
    json_t *parent = json_pack("{s:s}", "msg_id", "p");
    kmsg_set_parent(m, parent);
    json_decref(parent);
    char id[64];
    snprintf(id, sizeof id, "%s", kmsg_id(m));
    zmsg_t *z = kmsg_encode(&m, tx);
    assert_null(m);
    assert_int_equal(zmsg_size(z), 6);
    int err;
    kmsg_t *back = kmsg_decode(&z, rx, &err);
    assert_non_null(back);
    assert_string_equal(kmsg_id(back), id);
    assert_string_equal(kmsg_type(back), "execute_request");
    assert_string_equal(kmsg_parent_id(back), "p");
    json_t *h = kmsg_header(back);
    const char *fields[] = {"msg_id", "msg_type", "session", "username", "version", "date"};
    for (int i = 0; i < 6; i++) assert_true(json_is_string(json_object_get(h, fields[i])));
    kmsg_destroy(&back);
    hmac_destroy(&tx);
    hmac_destroy(&rx);
}

typedef struct {
    int received;
    char last_type[64];
} sink_t;

static void s_on_msg(kchan_t *chan, kmsg_t *msg, void *arg)
{
    (void) chan;
    sink_t *s = arg;
    s->received++;
    snprintf(s->last_type, sizeof s->last_type, "%s", kmsg_type(msg));
}

static void s_stop(uv_timer_t *t)
{
    uv_stop(t->loop);
}

static void test_kchan_drops_forgeries(void **state)
{
    (void) state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    hmac_t *h = hmac_new("hmac-sha256", KEY, strlen(KEY), NULL);
    hmac_t *forger = hmac_new("hmac-sha256", "wrong key", 9, NULL);
    zsock_t *pub = zsock_new_pub("tcp://127.0.0.1:*");
    assert_non_null(pub);
    char endpoint[64];
    snprintf(endpoint, sizeof endpoint, "tcp://127.0.0.1:%d", zsock_endpoint(pub) ? atoi(strrchr(zsock_endpoint(pub), ':') + 1) : 0);
    sink_t sink = {0, ""};
    kchan_t *sub = kchan_new(&loop, KCH_IOPUB, endpoint, NULL, h, "test", s_on_msg, &sink);
    assert_non_null(sub);
    uv_timer_t t;
    uv_timer_init(&loop, &t);
    //  Slow joiner: publish until the subscription has landed.
    hmac_t *genuine = hmac_new("hmac-sha256", KEY, strlen(KEY), NULL);
    for (int i = 0; i < 100 && sink.received == 0; i++) {
        kmsg_t *m = kmsg_new("status", "s", json_pack("{s:s}", "execution_state", "idle"));
        zmsg_t *z = kmsg_encode(&m, genuine);
        zmsg_pushstr(z, "kernel.topic");
        zmsg_send(&z, pub);
        uv_timer_start(&t, s_stop, 20, 0);
        uv_run(&loop, UV_RUN_DEFAULT);
    }
    assert_true(sink.received > 0);
    int before = sink.received;
    //  Forged (wrong key), truncated, delimiter-less and empty-signature messages.
    zmsg_t *z = s_wire(forger, 1, GOOD, NULL, 0);
    zmsg_send(&z, pub);
    z = zmsg_new();
    zmsg_addstr(z, "<IDS|MSG>");
    zmsg_send(&z, pub);
    z = zmsg_new();
    zmsg_addstr(z, "garbage");
    zmsg_send(&z, pub);
    z = s_wire(genuine, 1, GOOD, "", 0);
    zmsg_send(&z, pub);
    //  Then a genuine one, which must still arrive.
    kmsg_t *m = kmsg_new("stream", "s", json_pack("{s:s, s:s}", "name", "stdout", "text", "ok"));
    z = kmsg_encode(&m, genuine);
    zmsg_send(&z, pub);
    for (int i = 0; i < 50 && sink.received == before; i++) {
        uv_timer_start(&t, s_stop, 20, 0);
        uv_run(&loop, UV_RUN_DEFAULT);
    }
    assert_int_equal(sink.received, before + 1);
    assert_string_equal(sink.last_type, "stream");
    assert_int_equal(kchan_rejected(sub), 4);
    kchan_destroy(&sub);
    uv_close((uv_handle_t *) &t, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
    zsock_destroy(&pub);
    hmac_destroy(&h);
    hmac_destroy(&forger);
    hmac_destroy(&genuine);
}

static void test_send_without_peer_is_refused_not_leaked(void **state)
{
    (void) state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    hmac_t *h = hmac_new("hmac-sha256", KEY, strlen(KEY), NULL);
    //  Nobody listens there: an IMMEDIATE DEALER has no route, so sends fail at once.
    kchan_t *chan = kchan_new_immediate(&loop, KCH_SHELL, "tcp://127.0.0.1:9", "id", h, "test", NULL, NULL, NULL);
    assert_non_null(chan);
    assert_false(kchan_connected(chan));
    for (int i = 0; i < 3; i++) {
        kmsg_t *m = kmsg_new("kernel_info_request", "s", NULL);
        assert_int_equal(kchan_send(chan, &m), KB_EAGAIN);
        assert_null(m);
    }
    kchan_destroy(&chan);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
    hmac_destroy(&h);
}

int main(void)
{
    klog_set_level(KLOG_ERROR);
    zsys_handler_set(NULL);
    //  libzmq's socket cap is set before the first socket, as kbridge does at start.
    zwatch_sockets_max();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_decode_good_with_identities_and_buffers),
        cmocka_unit_test(test_decode_rejects),
        cmocka_unit_test(test_decode_fields_by_scan),
        cmocka_unit_test(test_raw_nul_in_content_is_refused),
        cmocka_unit_test(test_jx_refusal_reason_is_ascii),
        cmocka_unit_test(test_new_template_header),
        cmocka_unit_test(test_encode_round_trip),
        cmocka_unit_test(test_kchan_drops_forgeries),
        cmocka_unit_test(test_send_without_peer_is_refused_not_leaked),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    zsys_shutdown();
    return rc;
}
