/*  execution - aggregates one execute_request's traffic into an Execution object.

    Fed every kernel message whose parent is the request, in arrival order, it keeps
    {results, logs: {stdout, stderr}, error, execution_count} and reports each output as
    an event shaped like the E2B /execute lines (number_of_executions, stdout, stderr,
    result, error) the moment it arrives. It is complete only when both the
    execute_reply and the iopub status idle have arrived, since their relative order
    across sockets is not guaranteed; then it emits {"type": "end_of_execution"}.

    Results carry is_main_result (true for execute_result), text (text/plain), html,
    markdown, svg, png, jpeg, pdf, latex, json, javascript, data (e2b/data), chart
    (e2b/chart), and every other MIME type under extra. update_display_data updates the
    results sharing its display_id in place; clear_output clears what was shown so far
    (at once, or before the next output with wait=true).
*/
#ifndef EXECUTION_H
#define EXECUTION_H

#include "../kernelmgr/jmsg.h"
#include "../kernelmgr/kchan.h"

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

typedef struct _execution_t execution_t;

typedef struct {
    bool strip_text_quotes;  //  E2B: 'bar' -> bar in result text
    bool mime_top_level;     //  E2B: unknown MIME keys also at the result's top level
    size_t max_retained;     //  bytes of output kept in the object (0: unlimited)
    bool stream_only;        //  keep no outputs in the object: the events are the product
} execution_opts_t;

//  Called for each event (borrowed; copy what you keep). The last call carries
//  {"type": "end_of_execution"}; the execution may be destroyed from inside it.
typedef void(execution_fn)(execution_t *execution, json_t *event, void *arg);

//  Start aggregating for the request msg_id (copied). on_event may be NULL.
//  Caller owns return value and must destroy it when done.
execution_t *execution_new(const char *msg_id, const execution_opts_t *opts,
                           execution_fn *on_event, void *arg);
void execution_destroy(execution_t **self_p);

//  Feed a message whose parent_header.msg_id is this request's, from channel.
void execution_on_message(execution_t *self, kchan_type_t channel, jmsg_t *msg);

//  End the execution with an error that did not come from the kernel (the kernel died,
//  a timeout, a restart): emits an error event and the end. No-op once done.
void execution_fail(execution_t *self, const char *name, const char *value);

//  Stop emitting events (the requester left); aggregation goes on.
void execution_mute(execution_t *self);

bool execution_done(const execution_t *self);
//  True once the kernel itself finished the request (reply and idle both seen), which
//  can come after execution_fail() ended it for the requester.
bool execution_settled(const execution_t *self);
const char *execution_msg_id(const execution_t *self);

//  The Execution object: {"results", "logs": {"stdout", "stderr"}, "error",
//  "execution_count"}, plus "truncated": true when max_retained cut it short.
//  Caller owns return value.
json_t *execution_json(const execution_t *self);

//  Convert a MIME bundle to a result object (without "type"). Caller owns return value.
json_t *execution_result_from_bundle(json_t *data, bool is_main, const execution_opts_t *opts);

//  Join an IPython traceback list into one string, one entry per line, without ANSI
//  colour codes.
//  Caller owns return value (free()).
char *execution_join_traceback(json_t *traceback);

#endif
