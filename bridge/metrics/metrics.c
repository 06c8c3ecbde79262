/*  metrics - one registry, fixed series, the Prometheus text format. */
#include "metrics.h"
#include "../../base/kberr.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_VALUES 16

typedef struct {
    const char *name, *type, *help;
    const char *label;                 //  NULL: a single series
    const char *const *values;         //  the label's values; "other" last takes the rest
    size_t nvalues;
} family_t;

static const char *const s_streams[] = {"stdout", "stderr", "result"};
static const char *const s_codes[] = {"bad_request", "unauthorized", "not_found", "too_large",
                                      "kernel_dead", "timeout", "busy", "sandbox_unavailable",
                                      "internal", "already_exists", "permission_denied",
                                      "not_a_directory", "is_a_directory", "no_space", "other"};
static const char *const s_takes[] = {"kernel_hit", "kernel_miss", "sandbox_hit", "sandbox_miss"};
static const char *const s_kernel_states[] = {"starting", "idle", "busy", "restarting", "dead",
                                              "unresponsive", "other"};
static const char *const s_sandbox_states[] = {"starting", "running", "paused", "other"};
static const char *const s_pool_kinds[] = {"kernel", "sandbox"};

#define N(a) (sizeof a / sizeof *a)

static const family_t s_families[MX_COUNT_] = {
    [MX_OUTPUT_BYTES] = {"kbridge_output_bytes_total", "counter",
                         "Bytes of output executions produced (stream text, result bundles)",
                         "stream", s_streams, N(s_streams)},
    [MX_ERRORS] = {"kbridge_errors_total", "counter",
                   "Error replies, by kbridge's error name (HTTP errors by their status)", "code", s_codes,
                   N(s_codes)},
    [MX_POOL_TAKES] = {"kbridge_pool_takes_total", "counter",
                       "Kernels and sandboxes asked of a warm pool: served from it (hit) or started cold (miss)",
                       "result", s_takes, N(s_takes)},
    [MX_EVENTS_LOST] = {"kbridge_session_events_lost_total", "counter",
                         "Native events dropped because a session's queue was full (reported to it in events_lost)",
                         NULL, NULL, 1},
    [MX_KERNELS] = {"kbridge_kernels", "gauge", "Kernels, by state", "state", s_kernel_states,
                    N(s_kernel_states)},
    [MX_SANDBOXES] = {"kbridge_sandboxes", "gauge", "Sandboxes (the default one included), by state",
                      "state", s_sandbox_states, N(s_sandbox_states)},
    [MX_POOL_READY] = {"kbridge_pool_ready", "gauge", "Warm kernels and sandboxes waiting to be taken",
                       "kind", s_pool_kinds, N(s_pool_kinds)},
    [MX_POOL_TARGET] = {"kbridge_pool_target", "gauge",
                        "Warm kernels and sandboxes each pool keeps (--pool-kernels, --pool-sandboxes)",
                        "kind", s_pool_kinds, N(s_pool_kinds)},
    [MX_CONNECTIONS] = {"kbridge_connections", "gauge", "Client connections open", NULL, NULL, 1},
    [MX_CONNECTIONS_LIMIT] = {"kbridge_connections_limit", "gauge", "--max-connections", NULL, NULL, 1},
    [MX_KERNELS_LIMIT] = {"kbridge_kernels_limit", "gauge", "--max-kernels", NULL, NULL, 1},
    [MX_BUFFERED_BYTES] = {"kbridge_buffered_bytes", "gauge",
                           "Output bytes queued to clients and not yet taken by their sockets", NULL, NULL, 1},
    [MX_BUFFERED_LIMIT] = {"kbridge_buffered_bytes_limit", "gauge", "--max-buffered-bytes (0: none)", NULL,
                           NULL, 1},
    [MX_SESSION_BYTES] = {"kbridge_session_held_bytes", "gauge",
                           "Bytes of events native sessions hold: unsent, or kept for a reconnect to replay",
                           NULL, NULL, 1},
    [MX_START_TIME] = {"kbridge_start_time_seconds", "gauge", "When the service started, in Unix time",
                       NULL, NULL, 1},
};

static double s_values[MX_COUNT_][MAX_VALUES];

// ---------------------------------------------------------------------------------------
//  Histograms

static const char *const s_apis[] = {"native", "jupyter", "e2b", "control", "envd", "proxy",
                                     "console", "ops", "none", "other"};
//  "none": no HTTP answer (the client left first, or a tunnel took the connection over).
static const char *const s_status_classes[] = {"1xx", "2xx", "3xx", "4xx", "5xx", "none"};
static const char *const s_outcomes[] = {"ok", "error", "timeout", "interrupted", "kernel_error",
                                         "cancelled"};

static const double s_http_bounds[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                       0.25,  0.5,    1,     2.5,  5,     10};
static const char *const s_http_le[] = {"0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1",
                                        "0.25",  "0.5",    "1",     "2.5",  "5",     "10"};
static const double s_exec_bounds[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                       1,     2.5,  5,     10,   30,  60,   300};
static const char *const s_exec_le[] = {"0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5",
                                        "1",     "2.5",  "5",     "10",   "30",  "60",   "300"};

#define MAX_BUCKETS 16

typedef struct {
    uint64_t buckets[MAX_BUCKETS];  //  per bucket, not cumulative; the last is +Inf
    uint64_t count;
    double sum;
} hist_t;

static hist_t s_http[N(s_apis)][N(s_status_classes)];
static hist_t s_exec;
static uint64_t s_executions[N(s_outcomes)];

static void s_observe(hist_t *h, const double *bounds, size_t nbounds, double v)
{
    size_t i = 0;
    while (i < nbounds && v > bounds[i]) i++;
    h->buckets[i]++;
    h->count++;
    h->sum += v;
}

// ---------------------------------------------------------------------------------------
//  Recording

static int s_index(const char *const *values, size_t n, const char *value)
{
    if (value)
        for (size_t i = 0; i < n; i++)
            if (strcmp(values[i], value) == 0) return (int) i;
    return n && strcmp(values[n - 1], "other") == 0 ? (int) n - 1 : -1;
}

static double *s_slot(metric_t m, const char *label)
{
    if ((unsigned) m >= MX_COUNT_) return NULL;
    const family_t *f = &s_families[m];
    if (!f->label) return &s_values[m][0];
    int i = s_index(f->values, f->nvalues, label);
    return i < 0 ? NULL : &s_values[m][i];
}

void metrics_add(metric_t m, const char *label, double v)
{
    double *slot = s_slot(m, label);
    if (slot) *slot += v;
}

void metrics_set(metric_t m, const char *label, double v)
{
    double *slot = s_slot(m, label);
    if (slot) *slot = v;
}

void metrics_reset(metric_t m)
{
    if ((unsigned) m < MX_COUNT_) memset(s_values[m], 0, sizeof s_values[m]);
}

double metrics_get(metric_t m, const char *label)
{
    double *slot = s_slot(m, label);
    return slot ? *slot : 0;
}

void metrics_http_request(const char *api, int status, double seconds)
{
    int a = s_index(s_apis, N(s_apis), api ? api : "none");
    int c = status >= 100 && status < 600 ? status / 100 - 1 : 5;
    s_observe(&s_http[a][c], s_http_bounds, N(s_http_bounds), seconds);
}

void metrics_execution(const char *outcome, double seconds)
{
    int o = s_index(s_outcomes, N(s_outcomes), outcome);
    if (o < 0) o = 1;  //  an error of some kind
    s_executions[o]++;
    s_observe(&s_exec, s_exec_bounds, N(s_exec_bounds), seconds);
}

const char *metrics_outcome(const char *ename)
{
    if (!ename) return "ok";
    if (strcmp(ename, "TimeoutError") == 0) return "timeout";
    if (strcmp(ename, "KeyboardInterrupt") == 0) return "interrupted";
    //  The errors kbridge ends an execution with when the kernel could not finish it.
    static const char *const ours[] = {"KernelDied", "KernelDead", "KernelShutdown", "KernelRestarted",
                                       "KernelNotResponding", "KernelError", "OutOfMemoryError",
                                       "InternalError"};
    for (size_t i = 0; i < N(ours); i++)
        if (strcmp(ename, ours[i]) == 0) return "kernel_error";
    return "error";
}

void metrics_error(const char *code)
{
    metrics_add(MX_ERRORS, code, 1);
}

const char *metrics_status_code(int status)
{
    switch (status) {
    case 401:
    case 403: return "unauthorized";
    case 404: return "not_found";
    case 408:
    case 504: return "timeout";
    case 409: return "already_exists";
    case 413: return "too_large";
    case 429:
    case 503: return "busy";
    case 502: return "sandbox_unavailable";
    default: break;
    }
    if (status >= 500) return "internal";
    if (status >= 400) return "bad_request";
    return NULL;
}

void metrics_pool_set(const char *kind, size_t ready, size_t target)
{
    metrics_set(MX_POOL_READY, kind, (double) ready);
    metrics_set(MX_POOL_TARGET, kind, (double) target);
}

void metrics_pool_take(const char *kind, bool hit)
{
    char label[32];
    snprintf(label, sizeof label, "%s_%s", kind ? kind : "", hit ? "hit" : "miss");
    metrics_add(MX_POOL_TAKES, label, 1);
}

#define MAX_POOL_SPECS 16

static struct {
    char name[64];
    double ready, target, hits, misses;
} s_specs[MAX_POOL_SPECS];

static int s_spec_slot(const char *name)
{
    if (!name || !*name || strlen(name) >= sizeof s_specs[0].name ||
        strspn(name, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-") != strlen(name))
        return -1;
    for (int i = 0; i < MAX_POOL_SPECS; i++) {
        if (strcmp(s_specs[i].name, name) == 0) return i;
        if (!s_specs[i].name[0]) {
            snprintf(s_specs[i].name, sizeof s_specs[i].name, "%s", name);
            return i;
        }
    }
    return -1;
}

void metrics_pool_kernelspec_set(const char *kernelspec, size_t ready, size_t target)
{
    int i = s_spec_slot(kernelspec);
    if (i < 0) return;
    s_specs[i].ready = (double) ready;
    s_specs[i].target = (double) target;
}

void metrics_pool_kernelspec_take(const char *kernelspec, bool hit)
{
    int i = s_spec_slot(kernelspec);
    if (i < 0) return;
    if (hit) s_specs[i].hits++;
    else s_specs[i].misses++;
}

#define MAX_COLLECTORS 8

static struct {
    void (*fn)(void *arg);
    void *arg;
} s_collectors[MAX_COLLECTORS];

int metrics_collect(void (*fn)(void *arg), void *arg)
{
    for (size_t i = 0; i < MAX_COLLECTORS; i++)
        if (!s_collectors[i].fn) {
            s_collectors[i].fn = fn;
            s_collectors[i].arg = arg;
            return KB_OK;
        }
    return KB_ELIMIT;
}

void metrics_uncollect(void *arg)
{
    for (size_t i = 0; i < MAX_COLLECTORS; i++)
        if (s_collectors[i].fn && s_collectors[i].arg == arg) s_collectors[i].fn = NULL;
}

void metrics_run_collectors(void)
{
    for (size_t i = 0; i < MAX_COLLECTORS; i++)
        if (s_collectors[i].fn) s_collectors[i].fn(s_collectors[i].arg);
}

void metrics_clear(void)
{
    memset(s_values, 0, sizeof s_values);
    memset(s_http, 0, sizeof s_http);
    memset(&s_exec, 0, sizeof s_exec);
    memset(s_executions, 0, sizeof s_executions);
    memset(s_specs, 0, sizeof s_specs);
}

// ---------------------------------------------------------------------------------------
//  Exposition

static void s_head(FILE *out, const char *name, const char *type, const char *help)
{
    fprintf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

//  Series of a histogram: cumulative buckets, then +Inf (== _count), _sum and _count.
static void s_hist(FILE *out, const char *name, const char *labels, const hist_t *h,
                   const char *const *le, size_t nbounds)
{
    uint64_t cum = 0;
    const char *sep = *labels ? "," : "";
    for (size_t i = 0; i < nbounds; i++) {
        cum += h->buckets[i];
        fprintf(out, "%s_bucket{%s%sle=\"%s\"} %llu\n", name, labels, sep, le[i], (unsigned long long) cum);
    }
    cum += h->buckets[nbounds];
    fprintf(out, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", name, labels, sep, (unsigned long long) cum);
    fprintf(out, "%s_sum%s%s%s %.9g\n", name, *labels ? "{" : "", labels, *labels ? "}" : "", h->sum);
    fprintf(out, "%s_count%s%s%s %llu\n", name, *labels ? "{" : "", labels, *labels ? "}" : "",
            (unsigned long long) h->count);
}

char *metrics_render(size_t *len)
{
    char *text = NULL;
    size_t size = 0;
    FILE *out = open_memstream(&text, &size);
    if (!out) return NULL;
    for (int m = 0; m < MX_COUNT_; m++) {
        const family_t *f = &s_families[m];
        s_head(out, f->name, f->type, f->help);
        if (!f->label) {
            fprintf(out, "%s %.15g\n", f->name, s_values[m][0]);
            continue;
        }
        for (size_t i = 0; i < f->nvalues; i++)
            fprintf(out, "%s{%s=\"%s\"} %.15g\n", f->name, f->label, f->values[i], s_values[m][i]);
    }
    s_head(out, "kbridge_pool_kernelspec_ready", "gauge", "Warm kernels of each pooled kernelspec waiting to be taken");
    for (int i = 0; i < MAX_POOL_SPECS && s_specs[i].name[0]; i++)
        fprintf(out, "kbridge_pool_kernelspec_ready{kernelspec=\"%s\"} %.15g\n", s_specs[i].name, s_specs[i].ready);
    s_head(out, "kbridge_pool_kernelspec_target", "gauge", "Warm kernels each pooled kernelspec keeps (--pool-kernels)");
    for (int i = 0; i < MAX_POOL_SPECS && s_specs[i].name[0]; i++)
        fprintf(out, "kbridge_pool_kernelspec_target{kernelspec=\"%s\"} %.15g\n", s_specs[i].name, s_specs[i].target);
    s_head(out, "kbridge_pool_kernelspec_takes_total", "counter",
           "Kernel starts of each pooled kernelspec: served from its pool (hit) or started cold (miss)");
    for (int i = 0; i < MAX_POOL_SPECS && s_specs[i].name[0]; i++)
        fprintf(out, "kbridge_pool_kernelspec_takes_total{kernelspec=\"%s\",result=\"hit\"} %.15g\n"
                     "kbridge_pool_kernelspec_takes_total{kernelspec=\"%s\",result=\"miss\"} %.15g\n",
                s_specs[i].name, s_specs[i].hits, s_specs[i].name, s_specs[i].misses);
    s_head(out, "kbridge_executions_total", "counter",
           "Executions ended for their requester, by outcome");
    for (size_t i = 0; i < N(s_outcomes); i++)
        fprintf(out, "kbridge_executions_total{outcome=\"%s\"} %llu\n", s_outcomes[i],
                (unsigned long long) s_executions[i]);
    s_head(out, "kbridge_execution_duration_seconds", "histogram",
           "Executions from submission (queueing included) to their end");
    s_hist(out, "kbridge_execution_duration_seconds", "", &s_exec, s_exec_le, N(s_exec_bounds));
    s_head(out, "kbridge_http_request_duration_seconds", "histogram",
           "HTTP requests from their head to the end of the response (WebSockets: to the handshake), "
           "by API and status class");
    char labels[64];
    for (size_t a = 0; a < N(s_apis); a++)
        for (size_t c = 0; c < N(s_status_classes); c++) {
            if (!s_http[a][c].count) continue;
            snprintf(labels, sizeof labels, "api=\"%s\",status=\"%s\"", s_apis[a], s_status_classes[c]);
            s_hist(out, "kbridge_http_request_duration_seconds", labels, &s_http[a][c], s_http_le,
                   N(s_http_bounds));
        }
    if (fclose(out) != 0) {
        free(text);
        return NULL;
    }
    if (len) *len = size;
    return text;
}
