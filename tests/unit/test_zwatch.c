/*  Unit tests: zwatch on a real libuv loop with real ZeroMQ sockets (inproc PAIRs).

    - per-turn budgets: a burst larger than ZWATCH_BUDGET messages, or than
      ZWATCH_BYTE_BUDGET bytes, is drained over consecutive loop turns, nothing lost or
      reordered, and the loop does not sleep in between (the fd's edge is long spent);
    - fairness: another watcher is served in the same turn as a bursting one, and one
      whose input arrives mid-burst is served before the burst is over;
    - the edge-triggered re-check: a message already queued (its fd edge consumed) when
      the watcher is created is delivered;
    - destroy inside a callback: a watcher destroying itself, or another watcher (later or
      earlier in the turn, with input left), from inside on_msg: nothing is delivered to
      it afterwards and every handle is closed (the loop closes cleanly).

    A loop turn is counted by a uv_prepare handle, which runs once per iteration, before
    the poll phase and so before zwatch's uv_check drains.
*/
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "kernelmgr/zwatch.h"
#include "base/klog.h"

#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_MSGS 2048

typedef struct {
    uv_loop_t loop;
    uv_prepare_t prepare;
    uint64_t turn;
    uv_timer_t guard;
    bool timed_out;
} world_t;

typedef struct _rx_t rx_t;
struct _rx_t {
    world_t *w;
    zwatch_t *watch;
    int count;
    int bad;                  //  messages out of sequence or malformed
    uint64_t turn[MAX_MSGS];  //  the loop turn each message arrived in
    size_t size[MAX_MSGS];    //  its content size
    int stop_at;              //  uv_stop() the loop when count reaches it (0: never)
    //  Optional actions from inside on_msg, when count reaches the given value.
    int destroy_self_at;
    rx_t *destroy_other;
    int destroy_other_at;
    zsock_t *poke;  //  send one message here...
    int poke_at;    //  ...when count reaches this
};

static void s_on_prepare(uv_prepare_t *p)
{
    ((world_t *) p->data)->turn++;
}

//  On the heap and freed only by s_world_close: after a failed assertion the loop and its
//  watchers are abandoned, never reused (zwatch keeps per-loop state keyed by address).
static world_t *s_world_new(void)
{
    world_t *w = calloc(1, sizeof *w);
    assert_non_null(w);
    assert_int_equal(uv_loop_init(&w->loop), 0);
    uv_prepare_init(&w->loop, &w->prepare);
    w->prepare.data = w;
    uv_prepare_start(&w->prepare, s_on_prepare);
    uv_unref((uv_handle_t *) &w->prepare);
    uv_timer_init(&w->loop, &w->guard);
    w->guard.data = w;
    return w;
}

//  Every handle closed, the hub included: the loop has nothing left and closes.
static void s_world_close(world_t *w)
{
    uv_close((uv_handle_t *) &w->prepare, NULL);
    uv_close((uv_handle_t *) &w->guard, NULL);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&w->loop), 0);
    free(w);
}

static void s_on_guard(uv_timer_t *t)
{
    world_t *w = t->data;
    w->timed_out = true;
    uv_stop(&w->loop);
}

//  Run the loop (blocking in poll whenever zwatch lets it) until a receiver stops it or
//  timeout_ms passes. Returns false on timeout.
static bool s_run(world_t *w, int timeout_ms)
{
    w->timed_out = false;
    uv_timer_start(&w->guard, s_on_guard, (uint64_t) timeout_ms, 0);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    uv_timer_stop(&w->guard);
    return !w->timed_out;
}

//  Exactly n loop iterations that never block.
static void s_turns(world_t *w, int n)
{
    for (int i = 0; i < n; i++) uv_run(&w->loop, UV_RUN_NOWAIT);
}

static void s_on_msg(zwatch_t *watch, zmsg_t **msg_p, void *arg)
{
    rx_t *rx = arg;
    zmsg_t *msg = *msg_p;
    assert_ptr_equal(watch, rx->watch);
    zframe_t *seq = zmsg_first(msg);
    uint32_t n = UINT32_MAX;
    if (seq && zframe_size(seq) == sizeof n) memcpy(&n, zframe_data(seq), sizeof n);
    if (n != (uint32_t) rx->count || rx->count >= MAX_MSGS) rx->bad++;
    if (rx->count < MAX_MSGS) {
        rx->turn[rx->count] = rx->w->turn;
        rx->size[rx->count] = zmsg_content_size(msg);
    }
    rx->count++;
    if (rx->stop_at && rx->count == rx->stop_at) uv_stop(&rx->w->loop);
    if (rx->poke && rx->count == rx->poke_at) {
        zmsg_t *m = zmsg_new();
        uint32_t zero = 0;
        zmsg_addmem(m, &zero, sizeof zero);
        assert_int_equal(zmsg_send(&m, rx->poke), 0);
    }
    if (rx->destroy_other && rx->count == rx->destroy_other_at) {
        zwatch_destroy(&rx->destroy_other->watch);
        assert_null(rx->destroy_other->watch);
    }
    if (rx->destroy_self_at && rx->count == rx->destroy_self_at) {
        zwatch_destroy(&rx->watch);
        assert_null(rx->watch);
    }
}

//  A connected inproc PAIR: *tx_p is the sending end (not watched), the receiving end is
//  returned for zwatch_new.
static zsock_t *s_pair(zsock_t **tx_p)
{
    static int n;
    char ep[64];
    snprintf(ep, sizeof ep, "@inproc://test-zwatch-%d", n++);
    zsock_t *rx = zsock_new_pair(ep);
    assert_non_null(rx);
    ep[0] = '>';
    *tx_p = zsock_new_pair(ep);
    assert_non_null(*tx_p);
    //  Whole bursts are queued before anything is received.
    zsock_set_sndhwm(*tx_p, 0);
    zsock_set_rcvhwm(rx, 0);
    return rx;
}

static void s_send_seq(zsock_t *tx, int first, int count, size_t payload)
{
    char *pad = payload ? calloc(1, payload) : NULL;
    for (int i = first; i < first + count; i++) {
        zmsg_t *m = zmsg_new();
        uint32_t n = (uint32_t) i;
        zmsg_addmem(m, &n, sizeof n);
        if (payload) zmsg_addmem(m, pad, payload);
        assert_int_equal(zmsg_send(&m, tx), 0);
    }
    free(pad);
}

static rx_t *s_rx_new(world_t *w)
{
    rx_t *rx = calloc(1, sizeof *rx);
    assert_non_null(rx);
    rx->w = w;
    return rx;
}

static void s_watch(rx_t *rx, zsock_t **sock_p)
{
    rx->watch = zwatch_new(&rx->w->loop, sock_p, s_on_msg, rx);
    assert_non_null(rx->watch);
    assert_null(*sock_p);
}

//  The per-turn contract for rx's first `count` messages: each turn takes at most
//  ZWATCH_BUDGET messages and stops once ZWATCH_BYTE_BUDGET bytes are reached; a turn
//  that is not the last one stopped only for a budget; the turns are consecutive.
//  Returns the number of turns used.
static int s_check_turns(const rx_t *rx, int count)
{
    int turns = 0;
    int i = 0;
    uint64_t prev_turn = 0;
    while (i < count) {
        uint64_t t = rx->turn[i];
        if (turns) assert_int_equal(t, prev_turn + 1);
        int n = 0;
        size_t bytes = 0, last = 0;
        while (i < count && rx->turn[i] == t) {
            last = rx->size[i];
            bytes += last;
            n++;
            i++;
        }
        assert_true(n <= ZWATCH_BUDGET);
        assert_true(bytes - last < ZWATCH_BYTE_BUDGET);
        if (i < count) assert_true(n == ZWATCH_BUDGET || bytes >= ZWATCH_BYTE_BUDGET);
        prev_turn = t;
        turns++;
    }
    return turns;
}

static void test_message_budget_spreads_a_burst_over_turns(void **state)
{
    (void) state;
    world_t *w = s_world_new();
    zsock_t *tx;
    zsock_t *sock = s_pair(&tx);
    const int total = 2 * ZWATCH_BUDGET + 88;
    s_send_seq(tx, 0, total, 0);
    rx_t *rx = s_rx_new(w);
    rx->stop_at = total;
    s_watch(rx, &sock);
    uint64_t t0 = uv_now(&w->loop);
    assert_true(s_run(w, 5000));
    //  Between turns the fd reports nothing (its edge went with the first drain): only
    //  zwatch keeping the loop awake makes this prompt.
    uv_update_time(&w->loop);
    assert_true(uv_now(&w->loop) - t0 < 1000);
    assert_int_equal(rx->count, total);
    assert_int_equal(rx->bad, 0);
    assert_int_equal(s_check_turns(rx, total), 3);
    //  Exactly ZWATCH_BUDGET in each full turn.
    assert_int_equal(rx->turn[ZWATCH_BUDGET - 1], rx->turn[0]);
    assert_int_equal(rx->turn[ZWATCH_BUDGET], rx->turn[0] + 1);
    //  Nothing more comes.
    s_turns(w, 5);
    assert_int_equal(rx->count, total);
    zwatch_destroy(&rx->watch);
    zsock_destroy(&tx);
    free(rx);
    s_world_close(w);
}

static void test_byte_budget_spreads_large_messages_over_turns(void **state)
{
    (void) state;
    world_t *w = s_world_new();
    zsock_t *tx;
    zsock_t *sock = s_pair(&tx);
    //  300 kB each: three stay under 1 MiB, the fourth crosses it and ends the turn.
    const int total = 20;
    const size_t payload = 300000;
    s_send_seq(tx, 0, total, payload);
    rx_t *rx = s_rx_new(w);
    rx->stop_at = total;
    s_watch(rx, &sock);
    assert_true(s_run(w, 5000));
    assert_int_equal(rx->count, total);
    assert_int_equal(rx->bad, 0);
    assert_int_equal(rx->size[0], payload + sizeof(uint32_t));
    assert_int_equal(s_check_turns(rx, total), 5);
    for (int i = 0; i < total; i++) assert_int_equal(rx->turn[i], rx->turn[0] + (uint64_t) (i / 4));
    zwatch_destroy(&rx->watch);
    zsock_destroy(&tx);
    free(rx);
    s_world_close(w);
}

static void test_other_watcher_is_served_during_a_burst(void **state)
{
    (void) state;
    world_t *w = s_world_new();
    zsock_t *tx_a, *tx_b, *tx_c;
    zsock_t *sock_a = s_pair(&tx_a), *sock_b = s_pair(&tx_b), *sock_c = s_pair(&tx_c);
    const int total = 3 * ZWATCH_BUDGET;
    s_send_seq(tx_a, 0, total, 0);
    s_send_seq(tx_b, 0, 1, 0);
    rx_t *a = s_rx_new(w), *b = s_rx_new(w), *c = s_rx_new(w);
    a->stop_at = total;
    //  c's only message is sent by a's callback, early in a's burst.
    a->poke = tx_c;
    a->poke_at = 10;
    s_watch(a, &sock_a);
    s_watch(b, &sock_b);
    s_watch(c, &sock_c);
    assert_true(s_run(w, 5000));
    assert_int_equal(a->count, total);
    assert_int_equal(a->bad, 0);
    assert_int_equal(s_check_turns(a, total), 3);
    //  b, behind a on the dirty list, is served in a's first turn.
    assert_int_equal(b->count, 1);
    assert_int_equal(b->bad, 0);
    assert_int_equal(b->turn[0], a->turn[0]);
    //  c's message arrived during a's first turn: it is served before a's burst is done.
    assert_int_equal(c->count, 1);
    assert_int_equal(c->bad, 0);
    assert_true(c->turn[0] < a->turn[total - 1]);
    zwatch_destroy(&a->watch);
    zwatch_destroy(&b->watch);
    zwatch_destroy(&c->watch);
    zsock_destroy(&tx_a);
    zsock_destroy(&tx_b);
    zsock_destroy(&tx_c);
    free(a);
    free(b);
    free(c);
    s_world_close(w);
}

static void test_message_queued_before_the_watcher_is_delivered(void **state)
{
    (void) state;
    world_t *w = s_world_new();
    zsock_t *tx;
    zsock_t *sock = s_pair(&tx);
    s_send_seq(tx, 0, 3, 0);
    //  Reading ZMQ_EVENTS processes the socket's mailbox: the fd's edge is spent, the
    //  messages are still queued. A watcher relying on the fd alone would never see them.
    assert_true(zsock_events(sock) & ZMQ_POLLIN);
    struct pollfd pfd = {.fd = zsock_fd(sock), .events = POLLIN};
    assert_int_equal(poll(&pfd, 1, 0), 0);
    rx_t *rx = s_rx_new(w);
    rx->stop_at = 3;
    s_watch(rx, &sock);
    assert_true(s_run(w, 2000));
    assert_int_equal(rx->count, 3);
    assert_int_equal(rx->bad, 0);
    zwatch_destroy(&rx->watch);
    zsock_destroy(&tx);
    free(rx);
    s_world_close(w);
}

static void test_destroy_self_inside_on_msg(void **state)
{
    (void) state;
    world_t *w = s_world_new();
    zsock_t *tx;
    zsock_t *sock = s_pair(&tx);
    s_send_seq(tx, 0, 10, 0);
    rx_t *rx = s_rx_new(w);
    rx->destroy_self_at = 1;
    s_watch(rx, &sock);
    s_turns(w, 5);
    assert_int_equal(rx->count, 1);
    assert_null(rx->watch);
    zsock_destroy(&tx);
    free(rx);
    s_world_close(w);  //  the watcher, and with the last one the hub, are closed
}

static void test_destroy_later_watcher_inside_on_msg(void **state)
{
    (void) state;
    world_t *w = s_world_new();
    zsock_t *tx_a, *tx_b;
    zsock_t *sock_a = s_pair(&tx_a), *sock_b = s_pair(&tx_b);
    s_send_seq(tx_a, 0, 10, 0);
    s_send_seq(tx_b, 0, 10, 0);
    rx_t *a = s_rx_new(w), *b = s_rx_new(w);
    //  b is behind a in the same turn: a removes it before its turn comes, then itself.
    a->destroy_other = b;
    a->destroy_other_at = 1;
    a->destroy_self_at = 3;
    s_watch(a, &sock_a);
    s_watch(b, &sock_b);
    s_turns(w, 5);
    assert_int_equal(a->count, 3);
    assert_int_equal(a->bad, 0);
    assert_int_equal(b->count, 0);
    assert_null(a->watch);
    assert_null(b->watch);
    zsock_destroy(&tx_a);
    zsock_destroy(&tx_b);
    free(a);
    free(b);
    s_world_close(w);
}

static void test_destroy_earlier_watcher_with_input_left(void **state)
{
    (void) state;
    world_t *w = s_world_new();
    zsock_t *tx_a, *tx_b;
    zsock_t *sock_a = s_pair(&tx_a), *sock_b = s_pair(&tx_b);
    //  b drains its first budget's worth, and is dirty again for the next turn, when a
    //  (after b in this turn) destroys it.
    s_send_seq(tx_b, 0, ZWATCH_BUDGET + 50, 0);
    s_send_seq(tx_a, 0, 5, 0);
    rx_t *a = s_rx_new(w), *b = s_rx_new(w);
    a->destroy_other = b;
    a->destroy_other_at = 1;
    s_watch(b, &sock_b);
    s_watch(a, &sock_a);
    s_turns(w, 5);
    assert_int_equal(b->count, ZWATCH_BUDGET);
    assert_int_equal(b->bad, 0);
    assert_null(b->watch);
    assert_int_equal(a->count, 5);
    assert_int_equal(a->bad, 0);
    assert_int_equal(a->turn[0], b->turn[0]);
    //  a is still served afterwards.
    a->stop_at = 6;
    s_send_seq(tx_a, 5, 1, 0);
    assert_true(s_run(w, 2000));
    assert_int_equal(a->count, 6);
    assert_int_equal(b->count, ZWATCH_BUDGET);
    zwatch_destroy(&a->watch);
    zsock_destroy(&tx_a);
    zsock_destroy(&tx_b);
    free(a);
    free(b);
    s_world_close(w);
}

//  Frames mode: every message arrives whole with its frames in order (more frames than the
//  receive array starts with included), a frame the callee takes is its own, and a
//  burst keeps the per-turn budget.
typedef struct {
    world_t *w;
    zwatch_t *watch;
    int count, bad, stop_at;
    zframe_t *kept;  //  the first frame of the last message, taken from the array
    uint64_t turn[MAX_MSGS];
} frx_t;

static void s_on_frames(zwatch_t *watch, zframe_t **frames, size_t n, void *arg)
{
    frx_t *rx = arg;
    assert_ptr_equal(watch, rx->watch);
    //  Message i has i % 40 + 1 frames, each carrying (i, its index).
    size_t want = (size_t) (rx->count % 40) + 1;
    if (n != want) rx->bad++;
    for (size_t f = 0; f < n; f++) {
        uint32_t v[2] = {UINT32_MAX, UINT32_MAX};
        if (zframe_size(frames[f]) == sizeof v) memcpy(v, zframe_data(frames[f]), sizeof v);
        if (v[0] != (uint32_t) rx->count || v[1] != f) rx->bad++;
        if (zframe_more(frames[f]) != (f + 1 < n)) rx->bad++;
    }
    zframe_destroy(&rx->kept);
    rx->kept = frames[0];
    frames[0] = NULL;
    if (rx->count < MAX_MSGS) rx->turn[rx->count] = rx->w->turn;
    rx->count++;
    if (rx->count == rx->stop_at) uv_stop(&rx->w->loop);
}

static void test_frames_mode_delivers_whole_messages(void **state)
{
    (void) state;
    world_t *w = s_world_new();
    zsock_t *tx;
    zsock_t *sock = s_pair(&tx);
    const int total = ZWATCH_BUDGET + 44;
    for (int i = 0; i < total; i++) {
        zmsg_t *m = zmsg_new();
        for (uint32_t f = 0; f < (uint32_t) (i % 40) + 1; f++) {
            uint32_t v[2] = {(uint32_t) i, f};
            zmsg_addmem(m, v, sizeof v);
        }
        assert_int_equal(zmsg_send(&m, tx), 0);
    }
    frx_t *rx = calloc(1, sizeof *rx);
    assert_non_null(rx);
    rx->w = w;
    rx->stop_at = total;
    rx->watch = zwatch_new_frames(&w->loop, &sock, s_on_frames, rx);
    assert_non_null(rx->watch);
    assert_true(s_run(w, 5000));
    assert_int_equal(rx->count, total);
    assert_int_equal(rx->bad, 0);
    assert_int_equal(rx->turn[ZWATCH_BUDGET - 1], rx->turn[0]);
    assert_int_equal(rx->turn[ZWATCH_BUDGET], rx->turn[0] + 1);
    uint32_t v[2];
    assert_int_equal(zframe_size(rx->kept), sizeof v);
    memcpy(v, zframe_data(rx->kept), sizeof v);
    assert_int_equal(v[0], (uint32_t) total - 1);
    zframe_destroy(&rx->kept);
    zwatch_destroy(&rx->watch);
    zsock_destroy(&tx);
    free(rx);
    s_world_close(w);
}

int main(void)
{
    klog_set_level(KLOG_ERROR);
    zsys_handler_set(NULL);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_message_budget_spreads_a_burst_over_turns),
        cmocka_unit_test(test_byte_budget_spreads_large_messages_over_turns),
        cmocka_unit_test(test_other_watcher_is_served_during_a_burst),
        cmocka_unit_test(test_message_queued_before_the_watcher_is_delivered),
        cmocka_unit_test(test_destroy_self_inside_on_msg),
        cmocka_unit_test(test_destroy_later_watcher_inside_on_msg),
        cmocka_unit_test(test_destroy_earlier_watcher_with_input_left),
        cmocka_unit_test(test_frames_mode_delivers_whole_messages),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    zsys_shutdown();
    return rc;
}
