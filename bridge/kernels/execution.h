/*  execution - aggregates one execute_request's traffic into an Execution object.

    Fed every kernel message whose parent is the request, in arrival order, it keeps
    {results, logs: {stdout, stderr}, error, execution_count} and reports each output as
    an event the moment it arrives: the execution count, stream text, a result or display
    (with its display id, or as an update), an error, a clear_output, and the end. It is
    complete only when both the execute_reply and the iopub status idle have arrived,
    since their relative order across sockets is not guaranteed.

    An event carries its parts as the kernel sent them (raw JSON spans, see jraw.h) so
    that each API renders it in its own wire format without decoding large values, and
    also kbridge's default rendering (the body of the native API's events and of the
    Execution object's items), unless opts.raw_events says nobody wants it. Results in
    the default rendering: is_main_result (true for execute_result), text (text/plain),
    html, markdown, svg, png, jpeg, pdf, latex, json, javascript, and every other MIME
    type under extra. update_display_data updates the results sharing its display_id in
    place; clear_output clears what was shown so far (at once, or before the next output
    with wait=true).
*/
#ifndef EXECUTION_H
#define EXECUTION_H

#include "../buf/jbuf.h"
#include "../../kernelmgr/kchan.h"
#include "../../kernelmgr/kmsg.h"

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

typedef struct _execution_t execution_t;

typedef struct {
    size_t max_retained;  //  bytes of output kept in the object (0: unlimited)
    bool stream_only;     //  keep no outputs in the object: the events are the product
    bool raw_events;      //  events need no default rendering (their body is empty)
} execution_opts_t;

typedef enum {
    EXEC_EV_COUNT,   //  execution_count
    EXEC_EV_STREAM,  //  is_stderr, text, date
    EXEC_EV_RESULT,  //  data, is_main, display_id, update
    EXEC_EV_ERROR,   //  ename, evalue, traceback
    EXEC_EV_CLEAR,   //  wait
    EXEC_EV_END      //  the last event; the execution may be destroyed from inside it
} exec_event_kind_t;

typedef struct {
    exec_event_kind_t kind;
    const char *type;       //  the default event type: "number_of_executions", "stdout",
                            //  "stderr", "result", "error", "clear_output", "end_of_execution"
    //  The default rendering: the JSON members after "type" (e.g. "text":"hi\n",
    //  "timestamp":"..."), empty for the end and with raw_events.
    const char *body;
    size_t len;
    int64_t execution_count;
    bool is_stderr;
    jraw_t text;            //  the kernel's string token (render with execution_add_value)
    const char *date;       //  the message's header date (ISO 8601, ending in Z)
    jraw_t data;            //  the MIME bundle, an object
    bool is_main, update;
    const char *display_id; //  NULL when the kernel gave none
    const char *ename, *evalue, *traceback;
    bool wait;
} exec_event_t;

//  Called for each event; ev and everything it points to are borrowed for the call.
typedef void(execution_fn)(execution_t *execution, const exec_event_t *ev, void *arg);

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

// ---------------------------------------------------------------------------------------
//  Rendering helpers, for the APIs' own event formats.

//  Append a raw value as valid JSON: a string token spliced as is when valid (else with
//  what is broken replaced by U+FFFD), anything else re-encoded.
void execution_add_value(jbuf_t *b, jraw_t v);
//  Append a textual MIME value (a string, or a list of strings joined) as a JSON string;
//  with strip_quotes, one pair of surrounding quotes goes (E2B's text/plain).
void execution_add_text(jbuf_t *b, jraw_t v, bool strip_quotes);

//  One MIME type -> result field mapping.
typedef struct {
    const char *mime, *field;
    bool textual;
} exec_field_t;

//  Render a result's members (no braces) from a MIME bundle: the fields in table order,
//  then every other MIME type under "extra" (and, with extra_top_level, at the top level
//  too unless it collides with a field name), then is_main_result. strip_first applies
//  strip_quotes to the first field. Returns the bundle's payload size (for retention).
size_t execution_render_result(jbuf_t *b, jraw_t data, bool is_main, const exec_field_t *fields,
                               size_t nfields, bool strip_first, bool extra_top_level);

#endif
