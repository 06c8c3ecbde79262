/*  Unit tests: the HTTP/1.1 and WebSocket parsers (heads, body framing, chunked coding,
    frames, fragment reassembly, close frames) and the Host/Origin/query helpers. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "base/kberr.h"
#include "bridge/http/hchunk.h"
#include "bridge/http/hparse.h"
#include "bridge/http/hresp.h"
#include "bridge/http/hutil.h"
#include "bridge/http/wsframe.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int s_parse(const char *text, hhead_t *head)
{
    char why[200];
    long n = hparse_head_length(text, strlen(text), 65536, NULL);
    assert_true(n > 0);
    return hparse_request(text, (size_t) n, head, why, sizeof why);
}

static int s_framing(const char *text, hbody_t *framing, uint64_t *length)
{
    hhead_t head;
    char why[200];
    int rc = s_parse(text, &head);
    if (rc == 0) rc = hparse_request_body(&head, framing, length, why, sizeof why);
    hparse_free(&head);
    return rc;
}

static void test_request_head(void **state)
{
    (void) state;
    hhead_t head;
    assert_int_equal(s_parse("POST /api/kernels?token=x HTTP/1.1\r\nHost: localhost\r\n"
                             "X_Under: a b \r\nCONTENT-length: 12\r\n\r\n", &head), 0);
    assert_string_equal(head.method, "POST");
    assert_string_equal(head.target, "/api/kernels?token=x");
    assert_int_equal(head.version_minor, 1);
    assert_string_equal(hparse_header(&head, "x_under"), "a b");  //  underscores: E2B's SDK
    assert_string_equal(hparse_header(&head, "content-length"), "12");
    assert_null(hparse_header(&head, "nope"));
    assert_true(hparse_keep_alive(&head));
    hparse_free(&head);
}

static void test_head_length_trickle(void **state)
{
    (void) state;
    const char *text = "GET / HTTP/1.1\r\nHost: a\r\n\r\nrest";
    size_t scanned = 0;
    long n = 0;
    for (size_t i = 1; i <= strlen(text) && n == 0; i++) n = hparse_head_length(text, i, 65536, &scanned);
    assert_int_equal(n, (long) strlen("GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
    char big[300];
    memset(big, 'a', sizeof big);
    assert_int_equal(hparse_head_length(big, sizeof big, 100, NULL), -1);
}

static void test_refused_heads(void **state)
{
    (void) state;
    hhead_t head;
    //  Each of these could let two readers disagree about the message, or is plainly bad.
    static const struct {
        const char *text;
        int status;
    } cases[] = {
        {"GET / HTTP/1.1\r\n\r\n", 400},                                 //  no Host
        {"GET / HTTP/1.9\r\n\r\n", 400},                                 //  a later 1.x is 1.1
        {"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400},           //  two Hosts
        {"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505},
        {"GET / FOO/1.1\r\nHost: a\r\n\r\n", 400},
        {"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400},
        {"G(T / HTTP/1.1\r\nHost: a\r\n\r\n", 400},
        {"GET http://x/ HTTP/1.1\r\nHost: a\r\n\r\n", 400},
        {"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n", 400},
        {"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400},
        {"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n", 400},
        {"GET /\x01 HTTP/1.1\r\nHost: a\r\n\r\n", 400},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        int rc = s_parse(cases[i].text, &head);
        if (rc != cases[i].status) fail_msg("case %zu: %d, wanted %d", i, rc, cases[i].status);
        hparse_free(&head);
    }
}

static void test_body_framing(void **state)
{
    (void) state;
    hbody_t f;
    uint64_t n;
    assert_int_equal(s_framing("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n", &f, &n), 0);
    assert_int_equal(f, HBODY_LENGTH);
    assert_int_equal(n, 5);
    assert_int_equal(s_framing("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n", &f, &n), 0);
    assert_int_equal(f, HBODY_CHUNKED);
    assert_int_equal(s_framing("POST / HTTP/1.1\r\nHost: a\r\n\r\n", &f, &n), 0);
    assert_int_equal(f, HBODY_NONE);
    //  Malformed lengths are refused, never read as an empty body.
    assert_int_equal(s_framing("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -5\r\n\r\n", &f, &n), 400);
    assert_int_equal(s_framing("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: abc\r\n\r\n", &f, &n), 400);
    assert_int_equal(s_framing("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1 2\r\n\r\n", &f, &n), 400);
    assert_int_equal(s_framing("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", &f, &n), 400);
    assert_int_equal(s_framing("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", &f, &n), 0);
    assert_int_equal(s_framing("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", &f, &n), 400);
    assert_int_equal(s_framing("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", &f, &n), 501);
    assert_int_equal(s_framing("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", &f, &n), 501);
}

typedef struct {
    char data[256];
    size_t len;
} sink_t;

static void s_sink(const char *data, size_t len, void *arg)
{
    sink_t *s = arg;
    memcpy(s->data + s->len, data, len);
    s->len += len;
}

static void test_chunked(void **state)
{
    (void) state;
    const char *body = "5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nTrailer: x\r\n\r\nNEXT";
    //  Byte by byte and all at once give the same data and stop at the same place.
    for (int mode = 0; mode < 2; mode++) {
        hchunk_t c;
        hchunk_init(&c);
        sink_t sink = {{0}, 0};
        size_t at = 0, len = strlen(body);
        while (!c.done && at < len) {
            size_t piece = mode ? len - at : 1;
            long used = hchunk_feed(&c, body + at, piece, s_sink, &sink);
            assert_true(used >= 0);
            at += (size_t) used;
        }
        assert_true(c.done);
        assert_int_equal(sink.len, 11);
        assert_memory_equal(sink.data, "hello world", 11);
        assert_string_equal(body + at, "NEXT");
    }
    static const char *bad[] = {"x\r\n", "5\r\nhelloXX", "5\nhello\r\n", "\r\n", "fffffffffffffffff\r\n"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        hchunk_t c;
        hchunk_init(&c);
        assert_int_equal(hchunk_feed(&c, bad[i], strlen(bad[i]), NULL, NULL), -1);
        assert_true(c.failed);
    }
}

static size_t s_frame(char *out, int op, bool fin, const char *payload, size_t len, bool masked)
{
    uint8_t hdr[10];
    size_t h = wsframe_header(hdr, op, fin, len);
    hdr[1] |= masked ? 0x80 : 0;
    memcpy(out, hdr, h);
    static const uint8_t mask[4] = {0x11, 0x22, 0x33, 0x44};
    if (masked) {
        memcpy(out + h, mask, 4);
        h += 4;
    }
    for (size_t i = 0; i < len; i++) out[h + i] = (char) (payload[i] ^ (masked ? mask[i & 3] : 0));
    return h + len;
}

typedef struct {
    char msg[256];
    size_t len;
    int messages, opcode;
    int controls[8];
    size_t ncontrols;
    char control_data[128];
    size_t control_len;
} acc_t;

static void s_on_data(int opcode, const char *data, size_t len, bool first, bool last, void *arg)
{
    acc_t *a = arg;
    if (first) {
        a->len = 0;
        a->opcode = opcode;
    }
    memcpy(a->msg + a->len, data, len);
    a->len += len;
    if (last) a->messages++;
}

static void s_on_control(int opcode, const char *data, size_t len, void *arg)
{
    acc_t *a = arg;
    a->controls[a->ncontrols++] = opcode;
    memcpy(a->control_data, data, len);
    a->control_len = len;
}

//  Read one whole response from in with r; returns the body bytes seen, -1 on an error.
//  *used: the bytes that belonged to it.
static long s_read_response(hresp_t *r, const char *method, const char *in, size_t len, size_t *used)
{
    hresp_start(r, method);
    size_t at = 0;
    long body = 0;
    while (!hresp_done(r)) {
        hresp_event_t ev;
        size_t n = hresp_next(r, in + at, len - at, &ev);
        if (ev == HRESP_ERROR) return -1;
        if (ev == HRESP_MORE) break;
        if (ev == HRESP_BODY) body += (long) n;
        at += n;
        if (ev == HRESP_BODY && at == len) break;
    }
    *used = at;
    return body;
}

static void test_response_framing(void **state)
{
    (void) state;
    hresp_t *r = hresp_new(1024);
    assert_non_null(r);
    size_t used;
    //  Responses back to back on one connection: each ends where its framing says.
    const char *stream = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
                         "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n"
                         "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
                         "HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\n\r\n";
    size_t len = strlen(stream), at = 0;
    assert_int_equal(s_read_response(r, "GET", stream, len, &used), 5);
    at += used;
    assert_int_equal(s_read_response(r, "GET", stream + at, len - at, &used), 0);  //  100, then 204
    assert_int_equal(hresp_head(r)->status, 204);
    at += used;
    assert_int_equal(s_read_response(r, "GET", stream + at, len - at, &used), 13);  //  chunk framing included
    at += used;
    assert_int_equal(s_read_response(r, "GET", stream + at, len - at, &used), 0);
    at += used;
    assert_int_equal(at, len);
    //  HEAD: the length describes a body that does not come.
    const char *head = "HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n";
    assert_int_equal(s_read_response(r, "HEAD", head, strlen(head), &used), 0);
    assert_true(hresp_done(r));
    //  No length: until the close, which ends it cleanly; a length cut short does not.
    const char *open_ended = "HTTP/1.1 200 OK\r\n\r\nsome";
    assert_int_equal(s_read_response(r, "GET", open_ended, strlen(open_ended), &used), 4);
    assert_int_equal(hresp_framing(r), HBODY_UNTIL_CLOSE);
    assert_true(hresp_eof(r));
    const char *short_body = "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nsome";
    assert_int_equal(s_read_response(r, "GET", short_body, strlen(short_body), &used), 4);
    assert_false(hresp_eof(r));
    //  Refused: not HTTP, a head over the limit, a bad chunk size, conflicting lengths, a
    //  line break in the reason phrase, an unasked-for 101.
    char big[2048];
    snprintf(big, sizeof big, "HTTP/1.1 200 OK\r\nX-Big: %01500d\r\n\r\n", 0);
    const char *bad[] = {"NOT HTTP\r\n\r\n", big,
                         "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                         "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                         "HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n",
                         "HTTP/1.1 101 Switching Protocols\r\n\r\n"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        assert_int_equal(s_read_response(r, "GET", bad[i], strlen(bad[i]), &used), -1);
    //  An incomplete head uses nothing.
    hresp_start(r, "GET");
    hresp_event_t ev;
    assert_int_equal(hresp_next(r, "HTTP/1.1 200 OK\r\n", 17, &ev), 0);
    assert_int_equal(ev, HRESP_MORE);
    hresp_destroy(&r);
    assert_null(r);
}

static void test_ws_fragments_and_control(void **state)
{
    (void) state;
    char wire[512];
    size_t n = 0;
    n += s_frame(wire + n, WS_OP_TEXT, false, "frag", 4, true);
    n += s_frame(wire + n, WS_OP_PING, true, "p", 1, true);  //  control inside a message
    n += s_frame(wire + n, WS_OP_CONT, false, "ment", 4, true);
    n += s_frame(wire + n, WS_OP_CONT, true, "ed", 2, true);
    n += s_frame(wire + n, WS_OP_CLOSE, true, "\x03\xe8" "bye", 5, true);
    for (size_t step = 1; step <= n; step += 7) {
        char copy[512];
        memcpy(copy, wire, n);
        wsframe_t p;
        wsframe_init(&p);
        acc_t a;
        memset(&a, 0, sizeof a);
        wsframe_events_t ev = {s_on_data, s_on_control};
        for (size_t at = 0; at < n;) {
            size_t piece = n - at < step ? n - at : step;
            long used = wsframe_feed(&p, copy + at, piece, &ev, &a);
            assert_int_equal(used, (long) piece);
            at += piece;
        }
        assert_int_equal(a.messages, 1);
        assert_int_equal(a.opcode, WS_OP_TEXT);
        assert_int_equal(a.len, 10);
        assert_memory_equal(a.msg, "fragmented", 10);
        assert_int_equal(a.ncontrols, 2);
        assert_int_equal(a.controls[0], WS_OP_PING);
        assert_int_equal(a.controls[1], WS_OP_CLOSE);
        assert_int_equal(a.control_len, 5);
        assert_memory_equal(a.control_data, "\x03\xe8" "bye", 5);
    }
}

static void test_ws_protocol_errors(void **state)
{
    (void) state;
    char wire[256];
    struct {
        size_t len;
        const char *why;
    } cases[6];
    size_t k = 0;
    char bufs[6][256];
    cases[k].len = s_frame(bufs[k], WS_OP_TEXT, true, "abc", 3, false);  //  unmasked
    k++;
    cases[k].len = s_frame(bufs[k], WS_OP_CONT, true, "abc", 3, true);  //  no message to continue
    k++;
    cases[k].len = s_frame(bufs[k], WS_OP_PING, false, "a", 1, true);  //  fragmented control
    k++;
    cases[k].len = s_frame(bufs[k], 0x3, true, "a", 1, true);  //  reserved opcode
    k++;
    cases[k].len = s_frame(bufs[k], WS_OP_TEXT, true, "a", 1, true);
    bufs[k][0] |= 0x40;  //  RSV1 without an extension
    k++;
    size_t n = s_frame(bufs[k], WS_OP_TEXT, false, "a", 1, true);
    cases[k].len = n + s_frame(bufs[k] + n, WS_OP_BINARY, true, "b", 1, true);  //  new message inside one
    k++;
    for (size_t i = 0; i < k; i++) {
        memcpy(wire, bufs[i], cases[i].len);
        wsframe_t p;
        wsframe_init(&p);
        acc_t a;
        memset(&a, 0, sizeof a);
        wsframe_events_t ev = {s_on_data, s_on_control};
        long used = wsframe_feed(&p, wire, cases[i].len, &ev, &a);
        if (used != -1) fail_msg("case %zu accepted", i);
        assert_int_equal(p.close_code, 1002);
    }
}

static void test_utf8(void **state)
{
    (void) state;
    assert_true(wsframe_utf8_valid("h\xc3\xa9llo \xf0\x9f\x98\x80", 11));
    assert_false(wsframe_utf8_valid("\xc3", 1));              //  truncated
    assert_false(wsframe_utf8_valid("\xed\xa0\x80", 3));      //  surrogate
    assert_false(wsframe_utf8_valid("\xc0\xaf", 2));          //  overlong
    assert_false(wsframe_utf8_valid("\xf4\x90\x80\x80", 4));  //  above U+10FFFF
}

static void test_host_and_origin(void **state)
{
    (void) state;
    char name[64], scheme[16], hp[64];
    int port;
    assert_int_equal(hutil_host("LocalHost:49999", name, sizeof name, &port), 0);
    assert_string_equal(name, "localhost");
    assert_int_equal(port, 49999);
    assert_int_equal(hutil_host("[::1]:8080", name, sizeof name, &port), 0);
    assert_string_equal(name, "::1");
    assert_int_equal(port, 8080);
    assert_int_equal(hutil_host("[::1]", name, sizeof name, &port), 0);
    assert_int_equal(port, 0);
    assert_int_equal(hutil_host("3000-abc123.localhost:49999", name, sizeof name, &port), 0);
    assert_string_equal(name, "3000-abc123.localhost");
    assert_int_equal(hutil_host("::1", name, sizeof name, &port), KB_EINVAL);  //  needs brackets
    assert_int_equal(hutil_host("a:99999", name, sizeof name, &port), KB_EINVAL);
    assert_int_equal(hutil_host("a b", name, sizeof name, &port), KB_EINVAL);
    assert_int_equal(hutil_host("", name, sizeof name, &port), KB_EINVAL);
    assert_int_equal(hutil_host("[zz]:1", name, sizeof name, &port), KB_EINVAL);
    assert_int_equal(hutil_origin("HTTP://Localhost:3000", scheme, sizeof scheme, hp, sizeof hp), 0);
    assert_string_equal(scheme, "http");
    assert_string_equal(hp, "localhost:3000");
    assert_int_equal(hutil_origin("null", scheme, sizeof scheme, hp, sizeof hp), KB_EINVAL);
    assert_int_equal(hutil_origin("http://a/path", scheme, sizeof scheme, hp, sizeof hp), KB_EINVAL);
}

static void test_query_and_decode(void **state)
{
    (void) state;
    char out[64];
    assert_int_equal(hutil_query("a=1&token=x%20y+z&flag", "token", out, sizeof out), 0);
    assert_string_equal(out, "x y z");
    assert_int_equal(hutil_query("a=1&flag", "flag", out, sizeof out), 0);
    assert_string_equal(out, "");
    assert_int_equal(hutil_query("a=1", "b", out, sizeof out), KB_ENOTFOUND);
    assert_int_equal(hutil_query("a=%zz", "a", out, sizeof out), KB_EINVAL);
    assert_int_equal(hutil_query("a=%00", "a", out, sizeof out), KB_EINVAL);
    assert_int_equal(hutil_query("a=123456", "a", out, 4), KB_ETOOBIG);
    assert_int_equal(hutil_decode("/a%2Fb+c", 8, false, out, sizeof out), 6);
    assert_string_equal(out, "/a/b+c");
    assert_int_equal(hutil_decode("%4", 2, false, out, sizeof out), KB_EINVAL);
    hutil_redact_target("/api/kernels?a=1&token=secret&signature=s", out, sizeof out);
    assert_string_equal(out, "/api/kernels?a=1&token=...&signature=...");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_request_head),
        cmocka_unit_test(test_head_length_trickle),
        cmocka_unit_test(test_refused_heads),
        cmocka_unit_test(test_body_framing),
        cmocka_unit_test(test_chunked),
        cmocka_unit_test(test_response_framing),
        cmocka_unit_test(test_ws_fragments_and_control),
        cmocka_unit_test(test_ws_protocol_errors),
        cmocka_unit_test(test_utf8),
        cmocka_unit_test(test_host_and_origin),
        cmocka_unit_test(test_query_and_decode),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
