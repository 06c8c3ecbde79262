/*  klog - leveled logging to stderr, one line per record.

    The service is one thread, so there is no locking. Records below the current
    level cost one comparison.
*/
#ifndef KLOG_H
#define KLOG_H

#include <stdbool.h>

typedef enum { KLOG_DEBUG = 0, KLOG_INFO = 1, KLOG_WARN = 2, KLOG_ERROR = 3, KLOG_QUIET = 4 } klog_level_t;

//  Set the minimum level that is printed (default KLOG_INFO).
void klog_set_level(klog_level_t level);
klog_level_t klog_get_level(void);
//  Parse "debug", "info", "warn", "error", "quiet". Returns -1 if unknown.
int klog_parse_level(const char *name);
//  True if records at level would be printed.
bool klog_enabled(klog_level_t level);
void klog(klog_level_t level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define klog_debug(...) do { if (klog_enabled(KLOG_DEBUG)) klog(KLOG_DEBUG, __VA_ARGS__); } while (0)
#define klog_info(...) klog(KLOG_INFO, __VA_ARGS__)
#define klog_warn(...) klog(KLOG_WARN, __VA_ARGS__)
#define klog_error(...) klog(KLOG_ERROR, __VA_ARGS__)

#endif
