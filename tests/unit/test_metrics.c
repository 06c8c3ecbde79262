/*  Unit tests: the metrics registry (bridge/metrics/metrics.h): fixed series whatever the
    label values given, cumulative histogram buckets, the exposition's shape. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "bridge/metrics/metrics.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static size_t s_lines(const char *text)
{
    size_t n = 0;
    for (const char *c = text; *c; c++) n += *c == '\n';
    return n;
}

static void test_labels_are_bounded(void **state)
{
    (void) state;
    metrics_clear();
    size_t len0;
    char *before = metrics_render(&len0);
    assert_non_null(before);
    size_t lines0 = s_lines(before);
    metrics_error("not_found");
    metrics_error("made_up_code");
    metrics_error(NULL);
    metrics_add(MX_KERNELS, "idle", 2);
    metrics_add(MX_KERNELS, "weird\"state\n", 1);
    metrics_pool_take("kernel", true);
    metrics_pool_take("nonsense", false);  //  no "other" there: dropped
    metrics_pool_set("sandbox", 3, 4);
    metrics_pool_set("bogus", 9, 9);
    assert_true(metrics_get(MX_ERRORS, "not_found") == 1);
    assert_true(metrics_get(MX_ERRORS, "other") == 2);
    assert_true(metrics_get(MX_KERNELS, "idle") == 2);
    assert_true(metrics_get(MX_KERNELS, "other") == 1);
    assert_true(metrics_get(MX_POOL_TAKES, "kernel_hit") == 1);
    assert_true(metrics_get(MX_POOL_READY, "sandbox") == 3);
    assert_true(metrics_get(MX_POOL_TARGET, "sandbox") == 4);
    assert_true(metrics_get(MX_POOL_READY, "kernel") == 0);
    size_t len1;
    char *after = metrics_render(&len1);
    assert_non_null(after);
    assert_int_equal(s_lines(after), lines0);  //  values moved, no series appeared
    assert_null(strstr(after, "weird"));
    assert_null(strstr(after, "made_up"));
    assert_non_null(strstr(after, "kbridge_errors_total{code=\"not_found\"} 1\n"));
    assert_non_null(strstr(after, "kbridge_pool_ready{kind=\"sandbox\"} 3\n"));
    metrics_reset(MX_KERNELS);
    assert_true(metrics_get(MX_KERNELS, "idle") == 0);
    free(before);
    free(after);
}

//  Per kernelspec: series for the operator's names only, at most 16, never a name that
//  would need escaping.
static void test_pool_kernelspecs(void **state)
{
    (void) state;
    metrics_clear();
    metrics_pool_kernelspec_set("python3", 1, 2);
    metrics_pool_kernelspec_set("ir", 0, 1);
    metrics_pool_kernelspec_take("ir", true);
    metrics_pool_kernelspec_take("ir", false);
    metrics_pool_kernelspec_take("ir", true);
    metrics_pool_kernelspec_set("bad\"name", 1, 1);
    metrics_pool_kernelspec_set("", 1, 1);
    metrics_pool_kernelspec_take(NULL, true);
    char name[32];
    for (int i = 0; i < 20; i++) {
        snprintf(name, sizeof name, "spec%d", i);
        metrics_pool_kernelspec_set(name, 0, 1);
    }
    char *text = metrics_render(NULL);
    assert_non_null(text);
    assert_non_null(strstr(text, "kbridge_pool_kernelspec_ready{kernelspec=\"python3\"} 1\n"));
    assert_non_null(strstr(text, "kbridge_pool_kernelspec_target{kernelspec=\"python3\"} 2\n"));
    assert_non_null(strstr(text, "kbridge_pool_kernelspec_target{kernelspec=\"ir\"} 1\n"));
    assert_non_null(strstr(text, "kbridge_pool_kernelspec_takes_total{kernelspec=\"ir\",result=\"hit\"} 2\n"));
    assert_non_null(strstr(text, "kbridge_pool_kernelspec_takes_total{kernelspec=\"ir\",result=\"miss\"} 1\n"));
    assert_null(strstr(text, "bad\"name"));
    assert_null(strstr(text, "kernelspec=\"\""));
    assert_non_null(strstr(text, "kernelspec=\"spec13\""));  //  the 16th
    assert_null(strstr(text, "kernelspec=\"spec14\""));
    free(text);
    metrics_clear();
    text = metrics_render(NULL);
    assert_null(strstr(text, "kernelspec=\"ir\""));
    free(text);
}

static void test_histograms(void **state)
{
    (void) state;
    metrics_clear();
    metrics_http_request("native", 101, 0.0005);
    metrics_http_request("native", 200, 0.003);
    metrics_http_request("native", 204, 20.0);   //  past the last bound: +Inf only
    metrics_http_request("made-up", 404, 0.01);   //  api "other"
    metrics_http_request(NULL, 0, 0.01);          //  no API, no answer
    metrics_execution("ok", 0.2);
    metrics_execution("timeout", 1.0);
    metrics_execution("bogus", 1.0);              //  counted as an error
    char *text = metrics_render(NULL);
    assert_non_null(text);
    const char *want[] = {
        "kbridge_http_request_duration_seconds_bucket{api=\"native\",status=\"2xx\",le=\"0.001\"} 0\n",
        "kbridge_http_request_duration_seconds_bucket{api=\"native\",status=\"2xx\",le=\"0.005\"} 1\n",
        "kbridge_http_request_duration_seconds_bucket{api=\"native\",status=\"2xx\",le=\"10\"} 1\n",
        "kbridge_http_request_duration_seconds_bucket{api=\"native\",status=\"2xx\",le=\"+Inf\"} 2\n",
        "kbridge_http_request_duration_seconds_count{api=\"native\",status=\"2xx\"} 2\n",
        "kbridge_http_request_duration_seconds_bucket{api=\"native\",status=\"1xx\",le=\"0.001\"} 1\n",
        "kbridge_http_request_duration_seconds_count{api=\"other\",status=\"4xx\"} 1\n",
        "kbridge_http_request_duration_seconds_count{api=\"none\",status=\"none\"} 1\n",
        "kbridge_executions_total{outcome=\"ok\"} 1\n",
        "kbridge_executions_total{outcome=\"timeout\"} 1\n",
        "kbridge_executions_total{outcome=\"error\"} 1\n",
        "kbridge_execution_duration_seconds_bucket{le=\"0.25\"} 1\n",
        "kbridge_execution_duration_seconds_bucket{le=\"1\"} 3\n",
        "kbridge_execution_duration_seconds_bucket{le=\"+Inf\"} 3\n",
        "kbridge_execution_duration_seconds_sum 2.2\n",
        "kbridge_execution_duration_seconds_count 3\n",
        "# TYPE kbridge_execution_duration_seconds histogram\n",
        NULL};
    for (size_t i = 0; want[i]; i++) {
        if (!strstr(text, want[i])) fail_msg("missing: %s", want[i]);
    }
    //  Pairs not seen are not listed.
    assert_null(strstr(text, "api=\"jupyter\""));
    free(text);
}

static void test_outcomes_and_codes(void **state)
{
    (void) state;
    assert_string_equal(metrics_outcome(NULL), "ok");
    assert_string_equal(metrics_outcome("ZeroDivisionError"), "error");
    assert_string_equal(metrics_outcome("TimeoutError"), "timeout");
    assert_string_equal(metrics_outcome("KeyboardInterrupt"), "interrupted");
    assert_string_equal(metrics_outcome("KernelDied"), "kernel_error");
    assert_string_equal(metrics_outcome("KernelNotResponding"), "kernel_error");
    assert_null(metrics_status_code(200));
    assert_null(metrics_status_code(101));
    assert_null(metrics_status_code(0));
    assert_string_equal(metrics_status_code(403), "unauthorized");
    assert_string_equal(metrics_status_code(404), "not_found");
    assert_string_equal(metrics_status_code(413), "too_large");
    assert_string_equal(metrics_status_code(418), "bad_request");
    assert_string_equal(metrics_status_code(503), "busy");
    assert_string_equal(metrics_status_code(500), "internal");
}

static void s_collector(void *arg)
{
    (*(int *) arg)++;
    metrics_set(MX_SESSION_BYTES, NULL, 42);
}

static void test_collectors(void **state)
{
    (void) state;
    metrics_clear();
    int calls = 0;
    assert_int_equal(metrics_collect(s_collector, &calls), 0);
    metrics_run_collectors();
    assert_int_equal(calls, 1);
    assert_true(metrics_get(MX_SESSION_BYTES, NULL) == 42);
    metrics_uncollect(&calls);
    metrics_run_collectors();
    assert_int_equal(calls, 1);
    //  Bounded: the ninth is refused.
    int many[9];
    for (int i = 0; i < 8; i++) assert_int_equal(metrics_collect(s_collector, &many[i]), 0);
    assert_int_not_equal(metrics_collect(s_collector, &many[8]), 0);
    for (int i = 0; i < 8; i++) metrics_uncollect(&many[i]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_labels_are_bounded),
        cmocka_unit_test(test_pool_kernelspecs),
        cmocka_unit_test(test_histograms),
        cmocka_unit_test(test_outcomes_and_codes),
        cmocka_unit_test(test_collectors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
