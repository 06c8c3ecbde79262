/*  e2b_events - an Execution's events as E2B's /execute NDJSON lines.

    E2B's conventions, which only this API follows: text/plain loses one pair of
    surrounding quotes; e2b/data and e2b/chart become the data and chart fields; MIME
    types without a field are in extra and also at the result's top level (the JS SDK's
    formats() reads them there); timestamps end in "+00:00"; display ids,
    update_display_data and clear_output are not reported. Lines are ASCII-only JSON, as
    Python's json.dumps writes them, so no line holds a byte a client could split inside
    a character or read as a line break.
*/
#ifndef E2B_EVENTS_H
#define E2B_EVENTS_H

#include "../kernels/execution.h"

//  The line for ev (with its trailing newline) in a wire buffer, or NULL when E2B does not
//  report the event (or memory ran out). Caller owns return value (hreq_stream_write_buf
//  takes it, or wbuf_free).
char *e2b_event_line(const exec_event_t *ev, size_t *len);

#endif
