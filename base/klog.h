/*  klog - leveled logging to stderr, one line per record.

    The service is one thread, so there is no locking. Records below the current
    level cost one comparison.
*/
#ifndef KLOG_H
#define KLOG_H

#include <stdbool.h>
#include <stdint.h>

typedef enum { KLOG_DEBUG = 0, KLOG_INFO = 1, KLOG_WARN = 2, KLOG_ERROR = 3, KLOG_QUIET = 4 } klog_level_t;

//  Set the minimum level that is printed (default KLOG_INFO).
void klog_set_level(klog_level_t level);
klog_level_t klog_get_level(void);
//  Parse "debug", "info", "warn", "error", "quiet". Returns -1 if unknown.
int klog_parse_level(const char *name);
//  True if records at level would be printed.
bool klog_enabled(klog_level_t level);
void klog(klog_level_t level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

//  One call site's rate limit: at most one record per second; the records dropped in
//  between are counted, and the next one that passes says how many there were. For
//  anything a client or the system can make happen in a loop (refused connections,
//  accept errors), so a flood never becomes a flood of log lines.
typedef struct {
    uint64_t last_ms;
    uint64_t suppressed;
} klog_limit_t;
//  True if a record may be printed now; then *suppressed_out is how many were dropped.
bool klog_limit_pass(klog_limit_t *limit, uint64_t *suppressed_out);
void klog_suppressed_note(klog_level_t level, uint64_t count);
#define klog_limited(level, ...)                                                            \
    do {                                                                                    \
        static klog_limit_t _kl_limit;                                                      \
        uint64_t _kl_dropped;                                                               \
        if (klog_enabled(level) && klog_limit_pass(&_kl_limit, &_kl_dropped)) {             \
            if (_kl_dropped) klog_suppressed_note(level, _kl_dropped);                      \
            klog(level, __VA_ARGS__);                                                       \
        }                                                                                   \
    } while (0)

#define klog_debug(...) do { if (klog_enabled(KLOG_DEBUG)) klog(KLOG_DEBUG, __VA_ARGS__); } while (0)
#define klog_info(...) klog(KLOG_INFO, __VA_ARGS__)
#define klog_warn(...) klog(KLOG_WARN, __VA_ARGS__)
#define klog_error(...) klog(KLOG_ERROR, __VA_ARGS__)

#endif
