/*  agentproto - encoding and length-checked decoding of agent messages (see agentproto.h). */
#include "agentproto.h"
#include "base/kberr.h"

#include <string.h>
#include <sys/wait.h>

static uint16_t s_rd16(const uint8_t *p)
{
    return (uint16_t) (p[0] | (p[1] << 8));
}

static uint32_t s_rd32(const uint8_t *p)
{
    return (uint32_t) p[0] | ((uint32_t) p[1] << 8) | ((uint32_t) p[2] << 16) |
           ((uint32_t) p[3] << 24);
}

static uint64_t s_rd64(const uint8_t *p)
{
    return (uint64_t) s_rd32(p) | ((uint64_t) s_rd32(p + 4) << 32);
}

static void s_wr16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t) v;
    p[1] = (uint8_t) (v >> 8);
}

static void s_wr32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) p[i] = (uint8_t) (v >> (8 * i));
}

static void s_wr64(uint8_t *p, uint64_t v)
{
    s_wr32(p, (uint32_t) v);
    s_wr32(p + 4, (uint32_t) (v >> 32));
}

int ap_parse_fields(const uint8_t *data, size_t len, ap_field_t *out, size_t cap)
{
    size_t n = 0, at = 0;
    while (at < len) {
        if (len - at < 8 || n == cap) return -1;
        uint16_t tag = s_rd16(data + at);
        if (s_rd16(data + at + 2) != 0) return -1;
        uint32_t flen = s_rd32(data + at + 4);
        at += 8;
        if (flen > len - at) return -1;
        out[n].tag = tag;
        out[n].len = flen;
        out[n].data = data + at;
        n++;
        at += flen;
    }
    return (int) n;
}

int ap_parse(const void *buf, size_t len, ap_msg_t *msg)
{
    const uint8_t *p = buf;
    msg->n = 0;
    if (!p || len < AP_HEADER || len > AP_MAX_MSG) return -1;
    if (s_rd16(p) != AP_MAGIC || p[2] != AP_VERSION) return -1;
    if (s_rd32(p + 4) != len - AP_HEADER) return -1;
    msg->type = p[3];
    msg->id = s_rd64(p + 8);
    int n = ap_parse_fields(p + AP_HEADER, len - AP_HEADER, msg->f, msg->cap);
    if (n < 0) return -1;
    msg->n = (size_t) n;
    return 0;
}

const ap_field_t *ap_get(const ap_field_t *f, size_t n, uint16_t tag)
{
    for (size_t i = 0; i < n; i++)
        if (f[i].tag == tag) return &f[i];
    return NULL;
}

bool ap_u32(const ap_field_t *f, uint32_t *out)
{
    if (!f || f->len != 4) return false;
    *out = s_rd32(f->data);
    return true;
}

bool ap_u64(const ap_field_t *f, uint64_t *out)
{
    if (!f || f->len != 8) return false;
    *out = s_rd64(f->data);
    return true;
}

const char *ap_str(const ap_field_t *f)
{
    if (!f || f->len == 0 || f->data[f->len - 1] != '\0') return NULL;
    if (memchr(f->data, '\0', f->len - 1)) return NULL;
    return (const char *) f->data;
}

bool ap_get_u32(const ap_msg_t *m, uint16_t tag, uint32_t *out)
{
    return ap_u32(ap_get(m->f, m->n, tag), out);
}

const char *ap_get_str(const ap_msg_t *m, uint16_t tag)
{
    return ap_str(ap_get(m->f, m->n, tag));
}

// ---------------------------------------------------------------------------------------

void ap_begin(ap_writer_t *w, void *buf, size_t cap, uint8_t type, uint64_t id)
{
    w->buf = buf;
    w->cap = cap > AP_MAX_MSG ? AP_MAX_MSG : cap;
    w->len = 0;
    w->overflow = w->cap < AP_HEADER;
    if (w->overflow) return;
    s_wr16(w->buf, AP_MAGIC);
    w->buf[2] = AP_VERSION;
    w->buf[3] = type;
    s_wr32(w->buf + 4, 0);
    s_wr64(w->buf + 8, id);
    w->len = AP_HEADER;
}

static uint8_t *s_field(ap_writer_t *w, uint16_t tag, size_t n)
{
    if (w->overflow || n > UINT32_MAX || w->cap - w->len < 8 || w->cap - w->len - 8 < n) {
        w->overflow = true;
        return NULL;
    }
    uint8_t *p = w->buf + w->len;
    s_wr16(p, tag);
    s_wr16(p + 2, 0);
    s_wr32(p + 4, (uint32_t) n);
    w->len += 8 + n;
    return p + 8;
}

void ap_put_u32(ap_writer_t *w, uint16_t tag, uint32_t v)
{
    uint8_t *p = s_field(w, tag, 4);
    if (p) s_wr32(p, v);
}

void ap_put_u64(ap_writer_t *w, uint16_t tag, uint64_t v)
{
    uint8_t *p = s_field(w, tag, 8);
    if (p) s_wr64(p, v);
}

void ap_put_str(ap_writer_t *w, uint16_t tag, const char *s)
{
    if (!s) return;
    size_t n = strlen(s) + 1;
    uint8_t *p = s_field(w, tag, n);
    if (p) memcpy(p, s, n);
}

void ap_put_bytes(ap_writer_t *w, uint16_t tag, const void *src, size_t n)
{
    uint8_t *p = s_field(w, tag, n);
    if (p && n) memcpy(p, src, n);
}

size_t ap_nest_begin(ap_writer_t *w, uint16_t tag)
{
    size_t mark = w->len;
    s_field(w, tag, 0);
    return mark;
}

void ap_nest_end(ap_writer_t *w, size_t mark)
{
    if (w->overflow) return;
    s_wr32(w->buf + mark + 4, (uint32_t) (w->len - mark - 8));
}

void ap_rewind(ap_writer_t *w, size_t mark)
{
    if (mark >= AP_HEADER && mark <= w->len) {
        w->len = mark;
        w->overflow = false;
    }
}

size_t ap_end(ap_writer_t *w)
{
    if (w->overflow) return 0;
    s_wr32(w->buf + 4, (uint32_t) (w->len - AP_HEADER));
    return w->len;
}

// ---------------------------------------------------------------------------------------
//  kbridge side: what the agent sends is checked field by field.

int ap_err_from_wire(uint32_t v)
{
    int e = (int) v;
    if (e < 0 && e > KB_ERR_MIN_) return e;
    return KB_EIO;
}

int ap_decode_error(const ap_msg_t *m, int *err, const char **why)
{
    uint32_t e;
    if (!ap_get_u32(m, APT_ERR, &e)) return -1;
    *err = ap_err_from_wire(e);
    if (*err == 0) *err = KB_EIO;
    *why = ap_get_str(m, APT_WHY);
    if (!*why) *why = "the agent gave no reason";
    return 0;
}

int ap_decode_hello(const ap_msg_t *m, int *err, const char **why, int *pid)
{
    uint32_t version, e, p = 0;
    if (!ap_get_u32(m, APT_VERSION, &version) || version != AP_VERSION) return -1;
    if (!ap_get_u32(m, APT_ERR, &e)) return -1;
    *err = e == 0 ? 0 : ap_err_from_wire(e);
    *why = ap_get_str(m, APT_WHY);
    if (*err == 0) {
        if (!ap_get_u32(m, APT_PID, &p) || p == 0 || p > (1u << 22)) return -1;
    } else if (!*why) {
        *why = "the agent gave no reason";
    }
    *pid = (int) p;
    return 0;
}

int ap_decode_spawned(const ap_msg_t *m, int *pid, uint32_t *flags, int *nfds)
{
    uint32_t p, fl;
    if (!ap_get_u32(m, APT_PID, &p) || p == 0 || p > (1u << 22)) return -1;
    if (!ap_get_u32(m, APT_FLAGS, &fl) || (fl & ~(uint32_t) (APS_STDIN | APS_PTY))) return -1;
    *pid = (int) p;
    *flags = fl;
    *nfds = (fl & APS_PTY) ? 1 : 2 + ((fl & APS_STDIN) ? 1 : 0);
    return 0;
}

int ap_decode_exit(const ap_msg_t *m, int *pid, int *status)
{
    uint32_t p, st;
    if (!ap_get_u32(m, APT_PID, &p) || p == 0 || p > (1u << 22)) return -1;
    if (!ap_get_u32(m, APT_STATUS, &st)) return -1;
    int s = (int) st;
    if (!WIFEXITED(s) && !WIFSIGNALED(s)) return -1;
    if (WIFSIGNALED(s) && (WTERMSIG(s) < 1 || WTERMSIG(s) > 64)) return -1;
    *pid = (int) p;
    *status = s;
    return 0;
}

static bool s_relative_name_ok(const char *name)
{
    if (!*name || name[0] == '/') return false;
    for (const char *p = name; *p;) {
        const char *slash = strchr(p, '/');
        size_t n = slash ? (size_t) (slash - p) : strlen(p);
        if (n == 0 || (n == 1 && p[0] == '.') || (n == 2 && p[0] == '.' && p[1] == '.'))
            return false;
        p += n;
        if (*p == '/' && !*++p) return false;  //  a trailing '/': an empty last component
    }
    return true;
}

int ap_decode_event(const ap_msg_t *m, int *type, const char **name, bool *is_dir)
{
    uint32_t t, d = 0;
    if (!ap_get_u32(m, APT_EVTYPE, &t) || t < 1 || t > 5) return -1;
    const char *n = ap_get_str(m, APT_NAME);
    if (!n || !s_relative_name_ok(n)) return -1;
    ap_get_u32(m, APT_ISDIR, &d);
    *type = (int) t;
    *name = n;
    *is_dir = d != 0;
    return 0;
}

static bool s_path_ok(const char *p)
{
    return p && p[0] == '/';
}

int ap_decode_entry(const ap_field_t *entry, ap_field_t *f, size_t cap, ap_entry_t *out)
{
    if (!entry || entry->tag != APT_ENTRY) return -1;
    int n = ap_parse_fields(entry->data, entry->len, f, cap);
    if (n < 0) return -1;
    memset(out, 0, sizeof *out);
    out->name = ap_str(ap_get(f, (size_t) n, APE_NAME));
    out->path = ap_str(ap_get(f, (size_t) n, APE_PATH));
    if (!out->name || strchr(out->name, '/') || !s_path_ok(out->path)) return -1;
    if (!ap_u32(ap_get(f, (size_t) n, APE_TYPE), &out->type) || out->type < 1 || out->type > 4)
        return -1;
    ap_u32(ap_get(f, (size_t) n, APE_TTYPE), &out->target_type);
    if (out->target_type > 4) return -1;
    const ap_field_t *t = ap_get(f, (size_t) n, APE_TARGET);
    if (t) {
        out->symlink_target = ap_str(t);
        if (!out->symlink_target) return -1;
    }
    if (out->type == 3 && !out->symlink_target) return -1;
    if (out->type != 3) {
        out->symlink_target = NULL;
        out->target_type = 0;
    }
    uint64_t v;
    if (!ap_u64(ap_get(f, (size_t) n, APE_SIZE), &out->size)) return -1;
    if (!ap_u32(ap_get(f, (size_t) n, APE_MODE), &out->mode)) return -1;
    if (!ap_u32(ap_get(f, (size_t) n, APE_UID), &out->uid)) return -1;
    if (!ap_u32(ap_get(f, (size_t) n, APE_GID), &out->gid)) return -1;
    if (!ap_u64(ap_get(f, (size_t) n, APE_MTIME), &v)) return -1;
    out->mtime_ns = (int64_t) v;
    out->owner = ap_str(ap_get(f, (size_t) n, APE_OWNER));
    out->group = ap_str(ap_get(f, (size_t) n, APE_GROUP));
    if (!out->owner || !out->group) return -1;
    size_t nm = 0;
    for (int i = 0; i < n; i++) {
        if (f[i].tag != APE_META) continue;
        const char *s = ap_str(&f[i]);
        if (!s || nm == 2 * AP_MAX_META) return -1;
        if (nm % 2 == 0 && (!*s || strlen(s) > AP_MAX_META_NAME)) return -1;
        if (nm % 2 == 1 && strlen(s) > AP_MAX_META_VALUE) return -1;
        out->meta[nm++] = s;
    }
    if (nm % 2) return -1;
    out->meta[nm] = NULL;
    return 0;
}
