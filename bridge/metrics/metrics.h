/*  metrics - the service's one registry of counters, gauges and histograms, and its
    Prometheus text exposition (format 0.0.4), served at GET /metrics (bridge/ops/).

    Process-wide, like the output budget in hconn: the modules that do the work call the
    recording functions below and know nothing else of metrics; nothing here knows a
    module. Every series is fixed at compile time: a label value that is not in its
    family's list is counted under "other" (or dropped where a family has none), so no
    client input can grow the registry. Loop thread only (no locking).
*/
#ifndef METRICS_H
#define METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

//  Families with at most one label, recorded with metrics_add / metrics_set.
typedef enum {
    //  counters
    MX_OUTPUT_BYTES,       //  kbridge_output_bytes_total{stream}: stdout, stderr, result
    MX_ERRORS,             //  kbridge_errors_total{code}: kbridge's error names
    MX_POOL_TAKES,         //  kbridge_pool_takes_total{result}: kernel_hit, kernel_miss, sandbox_hit, sandbox_miss
    MX_EVENTS_LOST,        //  kbridge_session_events_lost_total: native events dropped past a session's bound
    //  gauges
    MX_KERNELS,            //  kbridge_kernels{state}
    MX_SANDBOXES,          //  kbridge_sandboxes{state}
    MX_POOL_READY,         //  kbridge_pool_ready{kind}: kernel, sandbox
    MX_POOL_TARGET,        //  kbridge_pool_target{kind}
    MX_CONNECTIONS,        //  kbridge_connections
    MX_CONNECTIONS_LIMIT,  //  kbridge_connections_limit
    MX_KERNELS_LIMIT,      //  kbridge_kernels_limit
    MX_BUFFERED_BYTES,     //  kbridge_buffered_bytes: output queued to clients
    MX_BUFFERED_LIMIT,     //  kbridge_buffered_bytes_limit
    MX_SESSION_BYTES,      //  kbridge_session_held_bytes: native sessions' events held (unsent, kept for replay)
    MX_START_TIME,         //  kbridge_start_time_seconds
    MX_COUNT_
} metric_t;

//  Add v to a counter or gauge (label NULL for a family without one).
void metrics_add(metric_t m, const char *label, double v);
//  Set a gauge.
void metrics_set(metric_t m, const char *label, double v);
//  Every series of a gauge family back to 0 (before a recount at scrape time).
void metrics_reset(metric_t m);
//  The value of a series (tests, the console's status).
double metrics_get(metric_t m, const char *label);

//  One HTTP request answered (WebSocket upgrades: at the handshake): api is the API that
//  claimed it (its descriptor's name, NULL: none), status its HTTP status (0: none was
//  sent). Observed in kbridge_http_request_duration_seconds{api, status}, status as "2xx"
//  or "none".
void metrics_http_request(const char *api, int status, double seconds);

//  One execution ended for its requester (submission to end): counted in
//  kbridge_executions_total{outcome} and kbridge_execution_duration_seconds. outcome:
//  ok, error, timeout, interrupted, kernel_error, cancelled.
void metrics_execution(const char *outcome, double seconds);
//  The outcome for an execution that ended with error ename (NULL: none).
const char *metrics_outcome(const char *ename);

//  An error reply with one of kbridge's error names (the native API's codes).
void metrics_error(const char *code);
//  The error name for an HTTP error status (NULL below 400).
const char *metrics_status_code(int status);

//  The warm pools' hook: kind "kernel" or "sandbox"; ready is how many wait to be taken,
//  target how many the pool keeps (--pool-kernels / --pool-sandboxes). Call on every
//  change; both read 0 until a pool reports. metrics_pool_take counts a request that
//  was served from the pool (hit) or had to start one cold (miss).
void metrics_pool_set(const char *kind, size_t ready, size_t target);
void metrics_pool_take(const char *kind, bool hit);
//  The same for one kernelspec's warm kernels (--pool-kernels NAME=N), in
//  kbridge_pool_kernelspec_ready / _target / _takes_total{kernelspec}. Kernelspecs come
//  from the operator's list, not from clients; still at most 16 are kept (the first
//  reported), and a name outside [A-Za-z0-9._-] is not.
void metrics_pool_kernelspec_set(const char *kernelspec, size_t ready, size_t target);
void metrics_pool_kernelspec_take(const char *kernelspec, bool hit);

//  Gauges counted at scrape time by the module that knows them: fn(arg) runs before each
//  exposition and sets its gauges. At most 8; unregister (by arg) before arg goes.
//  Returns 0 or KB_ELIMIT.
int metrics_collect(void (*fn)(void *arg), void *arg);
void metrics_uncollect(void *arg);
//  Run the collectors (the scrape, before metrics_render).
void metrics_run_collectors(void);

//  The exposition of every family. Caller owns the return value (free()); NULL when out
//  of memory. *len is its length.
char *metrics_render(size_t *len);

//  Forget every value (tests; a fresh start).
void metrics_clear(void);

#endif
