/*  libFuzzer target: what kbridge receives from a sandbox's agent. The agent runs inside
    the sandbox, where code can take it over, so every datagram is hostile: parse it and
    run every decoder sbx.c uses on it (hello, error, spawned, exit, watch events, each
    nested entry). Nothing may read out of bounds, and whatever a decoder accepts must be
    what sbx.c relies on (checked here too).
*/
#include "sandbox/agentproto.h"

#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

static ap_field_t s_fields[AP_MAX_FIELDS], s_efields[AP_MAX_FIELDS];

//  No "" / "." / ".." component: a watch event's name stays below the watched directory.
static int s_below(const char *name)
{
    if (!name[0] || name[0] == '/') return 0;
    for (const char *p = name; *p;) {
        size_t n = strcspn(p, "/");
        if (n == 0 || (n == 1 && p[0] == '.') || (n == 2 && p[0] == '.' && p[1] == '.')) return 0;
        p += n;
        if (*p) p++;
        if (!*p && p[-1] == '/') return 0;
    }
    return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    //  A copy of exactly size bytes, so reads past the end are caught.
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf) return 0;
    memcpy(buf, data, size);
    ap_msg_t m = {.f = s_fields, .cap = AP_MAX_FIELDS};
    if (ap_parse(buf, size, &m) == 0) {
        int err, pid, status, nfds, type;
        uint32_t flags;
        const char *why, *name;
        bool is_dir;
        if (ap_decode_hello(&m, &err, &why, &pid) == 0) assert(err <= 0 && (err || pid > 0));
        if (ap_decode_error(&m, &err, &why) == 0) assert(err < 0 && why);
        if (ap_decode_spawned(&m, &pid, &flags, &nfds) == 0)
            assert(pid > 0 && nfds >= 1 && nfds <= 3);
        if (ap_decode_exit(&m, &pid, &status) == 0)
            assert(WIFEXITED(status) || WIFSIGNALED(status));
        if (ap_decode_event(&m, &type, &name, &is_dir) == 0)
            assert(type >= 1 && type <= 5 && s_below(name));
        for (size_t i = 0; i < m.n; i++) {
            ap_entry_t e;
            if (m.f[i].tag == APT_ENTRY &&
                ap_decode_entry(&m.f[i], s_efields, AP_MAX_FIELDS, &e) == 0) {
                assert(e.path[0] == '/' && !strchr(e.name, '/') && e.owner && e.group);
                assert(e.type >= 1 && e.type <= 4 && (e.type != 3 || e.symlink_target));
                size_t k = 0;
                while (e.meta[k]) k++;
                assert(k % 2 == 0 && k <= 2 * AP_MAX_META);
            }
        }
    }
    free(buf);
    return 0;
}
