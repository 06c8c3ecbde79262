/*  klog - leveled logging to stderr. */
#include "klog.h"
#include "kutil.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static klog_level_t s_level = KLOG_INFO;

void klog_set_level(klog_level_t level)
{
    s_level = level;
}

klog_level_t klog_get_level(void)
{
    return s_level;
}

int klog_parse_level(const char *name)
{
    static const char *names[] = {"debug", "info", "warn", "error", "quiet"};
    for (int i = 0; i < 5; i++)
        if (strcmp(name, names[i]) == 0) return i;
    return -1;
}

bool klog_enabled(klog_level_t level)
{
    return level >= s_level;
}

void klog(klog_level_t level, const char *fmt, ...)
{
    static const char *tags[] = {"debug", "info", "warn", "error"};
    if (level < s_level || level > KLOG_ERROR) return;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char stamp[32];
    strftime(stamp, sizeof stamp, "%H:%M:%S", &tm);
    //  One fprintf per record keeps concurrent writers (kernels share our stderr) from
    //  interleaving inside a line.
    char line[4096];
    int n = snprintf(line, sizeof line, "[%s.%03ld kbridge %s] ", stamp, ts.tv_nsec / 1000000,
                     tags[level]);
    va_list ap;
    va_start(ap, fmt);
    if (n >= 0 && (size_t) n < sizeof line) vsnprintf(line + n, sizeof line - (size_t) n, fmt, ap);
    va_end(ap);
    fprintf(stderr, "%s\n", line);
}

bool klog_limit_pass(klog_limit_t *limit, uint64_t *suppressed_out)
{
    uint64_t now = kb_now_ms();
    if (limit->last_ms && now - limit->last_ms < 1000) {
        limit->suppressed++;
        return false;
    }
    limit->last_ms = now;
    *suppressed_out = limit->suppressed;
    limit->suppressed = 0;
    return true;
}

void klog_suppressed_note(klog_level_t level, uint64_t count)
{
    klog(level, "(%llu similar lines suppressed in the last second)", (unsigned long long) count);
}
