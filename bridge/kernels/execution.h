/*  execution - aggregates one execute_request's traffic into an Execution object.

    Fed every kernel message whose parent is the request, in arrival order, it keeps
    {results, logs: {stdout, stderr}, error, execution_count} and reports each output as
    an event the moment it arrives: number_of_executions, stdout, stderr, result, error,
    clear_output, shaped like the E2B /execute lines. It is complete only when both the
    execute_reply and the iopub status idle have arrived, since their relative order
    across sockets is not guaranteed; then it reports end_of_execution.

    Results carry is_main_result (true for execute_result), text (text/plain), html,
    markdown, svg, png, jpeg, pdf, latex, json, javascript, data (e2b/data), chart
    (e2b/chart), and every other MIME type under extra. update_display_data updates the
    results sharing its display_id in place; clear_output clears what was shown so far
    (at once, or before the next output with wait=true).

    Large values (stream text, images, HTML) are never decoded: they are located in the
    kernel's JSON, checked to be valid JSON strings, and spliced into events and into the
    Execution object as they are (see jraw.h). Small structured parts go through jansson.
*/
#ifndef EXECUTION_H
#define EXECUTION_H

#include "../buf/jbuf.h"
#include "../../kernelmgr/kmsg.h"
#include "../../kernelmgr/kchan.h"

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

typedef struct _execution_t execution_t;

typedef struct {
    //  E2B's conventions: text/plain loses one pair of surrounding quotes, unknown MIME
    //  types are also repeated at the result's top level (the JS SDK's formats() reads
    //  them there), timestamps end in "+00:00", and display ids, update_display_data and
    //  clear_output are not reported.
    bool e2b;
    size_t max_retained;  //  bytes of output kept in the object (0: unlimited)
    bool stream_only;     //  keep no outputs in the object: the events are the product
} execution_opts_t;

//  Called for each event: its type and its body, the JSON members that follow "type"
//  (compact UTF-8, e.g. "text":"hi\n","timestamp":"..."; empty for end_of_execution).
//  Both are borrowed for the call. The last call is end_of_execution; the execution may
//  be destroyed from inside it.
typedef void(execution_fn)(execution_t *execution, const char *type, const char *body,
                           size_t len, void *arg);

//  Start aggregating for the request msg_id (copied). on_event may be NULL.
//  Caller owns return value and must destroy it when done.
execution_t *execution_new(const char *msg_id, const execution_opts_t *opts,
                           execution_fn *on_event, void *arg);
void execution_destroy(execution_t **self_p);

//  Feed a message whose parent_header.msg_id is this request's, from channel.
void execution_on_message(execution_t *self, kchan_type_t channel, kmsg_t *msg);

//  End the execution with an error that did not come from the kernel (the kernel died,
//  a timeout, a restart): reports an error event and the end. No-op once done.
void execution_fail(execution_t *self, const char *name, const char *value);

//  End an execution the kernel went idle on without ever replying to (ipykernel does that
//  when an interrupt lands outside the cell's code, or a handler raises): the error is
//  name/value unless the kernel already reported one. No-op once done.
void execution_end_unreplied(execution_t *self, const char *name, const char *value);

//  Stop reporting events (the requester left); aggregation goes on.
void execution_mute(execution_t *self);

bool execution_done(const execution_t *self);
//  True once the kernel itself finished the request (reply and idle both seen), which
//  can come after execution_fail() ended it for the requester.
bool execution_settled(const execution_t *self);
//  True if status idle arrived for the request but its reply has not.
bool execution_idle_unreplied(const execution_t *self);
const char *execution_msg_id(const execution_t *self);

//  Append the Execution object to b: {"results", "logs": {"stdout", "stderr"}, "error",
//  "execution_count"}, plus "truncated": true when max_retained cut it short.
void execution_write(const execution_t *self, jbuf_t *b);
//  The same, parsed. Caller owns return value.
json_t *execution_json(const execution_t *self);

//  Join an IPython traceback list into one string, one entry per line, without ANSI
//  colour codes. Caller owns return value (free()).
char *execution_join_traceback(json_t *traceback);

#endif
