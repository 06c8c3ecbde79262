/*  Sandbox tests: file operations as a user, with that user's permissions; uploads;
    reading without ever blocking; symlinks resolved inside; watches. */
#include "harness.h"

static sbx_t *S;       //  a namespaces sandbox (or the default one when not root)
static bool s_ns;

static int setup(void **state)
{
    (void) state;
    h_setup_root("files");
    s_ns = geteuid() == 0;
    S = s_ns ? h_sbx("files") : h_sbx_none("files");
    return 0;
}

static int teardown(void **state)
{
    (void) state;
    sbx_destroy(&S);
    h_spin(50);
    h_teardown_root();
    return 0;
}

#define NEED_NS()                                                                          \
    do {                                                                                   \
        if (!s_ns) skip();                                                                 \
    } while (0)

static const char *D;  //  a directory the user owns, inside

static void s_prepare(const char *script)
{
    char *out = h_sh(S, s_ns ? "user" : NULL, script);
    free(out);
}

static void test_stat_and_list(void **state)
{
    (void) state;
    D = s_ns ? "/home/user/t1" : NULL;
    if (!s_ns) skip();
    s_prepare("mkdir -p /home/user/t1/a/b/c && cd /home/user/t1 && echo hello > f && "
              "ln -s f link && ln -s /nowhere broken && ln -s a dirlink && echo x > a/g && echo y "
              "> a/b/h");
    h_fop_t f;
    H_FOP(f, sbx_stat(S, "user", "/home/user/t1/f", h_on_entries, &f));
    assert_int_equal(f.err, 0);
    assert_int_equal(f.n, 1);
    assert_int_equal(f.e[0].type, SBX_FILE);
    assert_int_equal(f.e[0].size, 6);
    assert_int_equal(f.e[0].uid, 1000);
    assert_string_equal(f.owners[0], "user:user");
    assert_true(f.e[0].mtime_ns > 1600000000ll * 1000000000ll);
    H_FOP(f, sbx_stat(S, "user", "/home/user/t1/link", h_on_entries, &f));
    assert_int_equal(f.e[0].type, SBX_SYMLINK);
    assert_int_equal(f.e[0].target_type, SBX_FILE);
    assert_string_equal(f.targets[0], "f");
    H_FOP(f, sbx_stat(S, "user", "/home/user/t1/broken", h_on_entries, &f));
    assert_int_equal(f.e[0].type, SBX_SYMLINK);
    assert_int_equal(f.e[0].target_type, 0);
    H_FOP(f, sbx_stat(S, "user", "/home/user/t1/nothing", h_on_entries, &f));
    assert_int_equal(f.err, KB_ENOTFOUND);
    assert_non_null(strstr(f.why, "/home/user/t1/nothing"));
    H_FOP(f, sbx_stat(S, "root", "/usr/bin/env", h_on_entries, &f));
    assert_string_equal(f.owners[0], "root:root");
    assert_int_equal(f.e[0].uid, 0);

    //  depth 1: children, sorted; depth 3: breadth first, dirlink not entered
    H_FOP(f, sbx_list(S, "user", "/home/user/t1", 1, h_on_entries, &f));
    assert_int_equal(f.err, 0);
    assert_int_equal(f.n, 5);
    assert_string_equal(f.names[0], "/home/user/t1/a");
    assert_string_equal(f.names[1], "/home/user/t1/broken");
    assert_string_equal(f.names[2], "/home/user/t1/dirlink");
    assert_int_equal(f.e[2].target_type, SBX_DIR);
    H_FOP(f, sbx_list(S, "user", "/home/user/t1", 3, h_on_entries, &f));
    const char *expect[] = {"/home/user/t1/a", "/home/user/t1/broken", "/home/user/t1/dirlink",
                            "/home/user/t1/f", "/home/user/t1/link", "/home/user/t1/a/b",
                            "/home/user/t1/a/g", "/home/user/t1/a/b/c", "/home/user/t1/a/b/h"};
    assert_int_equal(f.n, 9);
    for (size_t i = 0; i < 9; i++) assert_string_equal(f.names[i], expect[i]);
    H_FOP(f, sbx_list(S, "user", "/home/user/t1/f", 1, h_on_entries, &f));
    assert_int_equal(f.err, KB_ENOTDIR);
    //  permissions are the user's: /root is not theirs
    H_FOP(f, sbx_list(S, "user", "/root", 1, h_on_entries, &f));
    assert_int_equal(f.err, KB_EACCES);
    H_FOP(f, sbx_list(S, "root", "/root", 1, h_on_entries, &f));
    assert_int_equal(f.err, 0);
}

static void test_mkdir_rename_remove(void **state)
{
    (void) state;
    NEED_NS();
    h_fop_t f;
    H_FOP(f, sbx_mkdir(S, "user", "/home/user/t2", false, h_on_entries, &f));
    assert_int_equal(f.err, 0);
    assert_int_equal(f.e[0].type, SBX_DIR);
    H_FOP(f, sbx_mkdir(S, "user", "/home/user/t2", false, h_on_entries, &f));
    assert_int_equal(f.err, KB_EEXIST);
    H_FOP(f, sbx_mkdir(S, "user", "/home/user/t2", true, h_on_entries, &f));
    assert_int_equal(f.err, KB_EEXIST);
    H_FOP(f, sbx_mkdir(S, "user", "/home/user/t2/x/y/z", false, h_on_entries, &f));
    assert_int_equal(f.err, KB_ENOTFOUND);
    H_FOP(f, sbx_mkdir(S, "user", "/home/user/t2/x/y/z", true, h_on_entries, &f));
    assert_int_equal(f.err, 0);
    assert_string_equal(f.names[0], "/home/user/t2/x/y/z");
    H_FOP(f, sbx_mkdir(S, "user", "/etc/kbtest", false, h_on_entries, &f));
    assert_int_equal(f.err, KB_EACCES);
    H_FOP(f, sbx_rename(S, "user", "/home/user/t2/x", "/home/user/t2/w", h_on_entries, &f));
    assert_int_equal(f.err, 0);
    assert_string_equal(f.names[0], "/home/user/t2/w");
    H_FOP(f, sbx_rename(S, "user", "/home/user/t2/none", "/home/user/t2/v", h_on_entries, &f));
    assert_int_equal(f.err, KB_ENOTFOUND);
    H_FOP(f, sbx_remove(S, "user", "/home/user/t2", h_on_entries, &f));
    assert_int_equal(f.err, 0);
    assert_int_equal(f.n, 0);
    H_FOP(f, sbx_stat(S, "user", "/home/user/t2", h_on_entries, &f));
    assert_int_equal(f.err, KB_ENOTFOUND);
    H_FOP(f, sbx_remove(S, "user", "/home/user/t2", h_on_entries, &f));
    assert_int_equal(f.err, KB_ENOTFOUND);
    H_FOP(f, sbx_remove(S, "user", "/etc/passwd", h_on_entries, &f));
    assert_int_equal(f.err, KB_EACCES);
    //  bad paths are refused without a request
    assert_null(sbx_stat(S, "user", "relative", h_on_entries, &f));
    assert_null(sbx_stat(S, "nobody", "/", h_on_entries, &f));
}

static void test_meta(void **state)
{
    (void) state;
    NEED_NS();
    s_prepare("echo m > /home/user/meta.txt");
    h_fop_t f;
    const char *pairs[] = {"author", "ada", "kind", "note", NULL};
    H_FOP(f, sbx_set_meta(S, "user", "/home/user/meta.txt", pairs, h_on_entries, &f));
    assert_int_equal(f.err, 0);
    assert_non_null(strstr(f.meta, "author=ada;"));
    assert_non_null(strstr(f.meta, "kind=note;"));
    H_FOP(f, sbx_stat(S, "user", "/home/user/meta.txt", h_on_entries, &f));
    assert_non_null(strstr(f.meta, "author=ada;"));
    const char *bad[] = {"no/slash", "v", NULL};
    H_FOP(f, sbx_set_meta(S, "user", "/home/user/meta.txt", bad, h_on_entries, &f));
    assert_int_equal(f.err, KB_EINVAL);
    H_FOP(f, sbx_set_meta(S, "user", "/etc/passwd", pairs, h_on_entries, &f));
    assert_int_equal(f.err, KB_EACCES);
}

static char *s_read_fd(int fd)
{
    char *buf = calloc(1, 65536);
    ssize_t n = read(fd, buf, 65535);
    assert_true(n >= 0);
    close(fd);
    return buf;
}

//  FIFOs and devices are never opened: the request answers at once, nothing blocks.
static void test_open_read(void **state)
{
    (void) state;
    NEED_NS();
    s_prepare("echo content > /home/user/r.txt && mkfifo /home/user/fifo && ln -s /etc/passwd "
              "/home/user/pw && "
              "ln -s ../../../../../../../etc/passwd /home/user/pw2");
    h_fop_t f;
    H_FOP(f, sbx_open_read(S, "user", "/home/user/r.txt", h_on_open, &f));
    assert_int_equal(f.err, 0);
    assert_int_equal(f.e[0].size, 8);
    char *c = s_read_fd(f.fd);
    assert_string_equal(c, "content\n");
    free(c);
    uint64_t t0 = h_now_ms();
    H_FOP(f, sbx_open_read(S, "user", "/home/user/fifo", h_on_open, &f));
    assert_int_equal(f.err, KB_EINVAL);
    H_FOP(f, sbx_open_read(S, "root", "/dev/zero", h_on_open, &f));
    assert_int_equal(f.err, KB_EINVAL);
    H_FOP(f, sbx_open_read(S, "root", "/dev/tty", h_on_open, &f));
    assert_int_equal(f.err, KB_EINVAL);
    H_FOP(f, sbx_stat(S, "user", "/home/user/fifo", h_on_entries, &f));
    assert_int_equal(f.e[0].type, SBX_OTHER);
    assert_true(h_now_ms() - t0 < 2000);
    H_FOP(f, sbx_open_read(S, "user", "/home/user", h_on_open, &f));
    assert_int_equal(f.err, KB_EISDIR);
    H_FOP(f, sbx_open_read(S, "user", "/etc/shadow", h_on_open, &f));
    assert_int_equal(f.err, KB_EACCES);
    //  links resolve inside the sandbox: its own passwd, by either path
    for (int i = 0; i < 2; i++) {
        H_FOP(f, sbx_open_read(S, "user", i ? "/home/user/pw2" : "/home/user/pw", h_on_open, &f));
        assert_int_equal(f.err, 0);
        c = s_read_fd(f.fd);
        assert_non_null(strstr(c, "user:x:1000:1000:user:/home/user:/bin/bash"));
        assert_null(strstr(c, "cloudsdk"));
        free(c);
    }
    //  the host's paths do not exist inside (H_root is masked, /work is not there)
    H_FOP(f, sbx_list(S, "root", H_root, 1, h_on_entries, &f));
    assert_true(f.err == KB_EACCES || f.err == KB_ENOTFOUND);
}

typedef struct {
    bool done;
    int err;
    int fd;
    sbx_upload_t *up;
} h_up_t;

static void s_on_upload(sbx_upload_t *up, int err, const char *why, int fd, void *arg)
{
    (void) why;
    h_up_t *u = arg;
    u->up = up;
    u->err = err;
    u->fd = fd;
    u->done = true;
}

static sbx_upload_t *s_upload_start(const char *path, bool parents, h_up_t *u)
{
    memset(u, 0, sizeof *u);
    sbx_upload_t *up = sbx_upload_begin(S, "user", path, parents, s_on_upload, u);
    assert_non_null(up);
    assert_true(h_wait(&u->done, 10000));
    return up;
}

static void test_upload(void **state)
{
    (void) state;
    NEED_NS();
    h_up_t u;
    h_fop_t f;
    sbx_upload_t *up = s_upload_start("/home/user/up/new.txt", false, &u);
    assert_int_equal(u.err, KB_ENOTFOUND);
    sbx_upload_abort(&up);
    assert_null(up);
    up = s_upload_start("/home/user/up/new.txt", true, &u);
    assert_int_equal(u.err, 0);
    assert_true(u.fd >= 0);
    assert_int_equal(write(u.fd, "uploaded\n", 9), 9);
    //  not there before the commit
    H_FOP(f, sbx_stat(S, "user", "/home/user/up/new.txt", h_on_entries, &f));
    assert_int_equal(f.err, KB_ENOTFOUND);
    memset(&f, 0, sizeof f);
    sbx_upload_commit(&up, h_on_entries, &f);
    assert_null(up);
    assert_true(h_wait(&f.done, 10000));
    if (f.err) fail_msg("commit: %s", f.why);
    assert_int_equal(f.e[0].size, 9);
    assert_int_equal(f.e[0].mode & 0777, 0644);
    assert_string_equal(f.owners[0], "user:user");
    //  replacing keeps the old file's mode
    s_prepare("chmod 600 /home/user/up/new.txt");
    up = s_upload_start("/home/user/up/new.txt", false, &u);
    assert_int_equal(write(u.fd, "v2\n", 3), 3);
    memset(&f, 0, sizeof f);
    sbx_upload_commit(&up, h_on_entries, &f);
    assert_true(h_wait(&f.done, 10000));
    if (f.err) fail_msg("commit2: %s", f.why);
    assert_int_equal(f.e[0].mode & 0777, 0600);
    assert_int_equal(f.e[0].size, 3);
    //  cut off: nothing left, not even a temporary file
    up = s_upload_start("/home/user/up/cut.txt", false, &u);
    assert_int_equal(write(u.fd, "partial", 7), 7);
    sbx_upload_abort(&up);
    h_spin(100);
    char *out = h_sh(S, "user", "ls -A /home/user/up");
    assert_string_equal(out, "new.txt\n");
    free(out);
    //  aborted while still beginning
    memset(&u, 0, sizeof u);
    up = sbx_upload_begin(S, "user", "/home/user/up/early.txt", false, s_on_upload, &u);
    sbx_upload_abort(&up);
    h_spin(200);
    assert_false(u.done);
    out = h_sh(S, "user", "ls -A /home/user/up");
    assert_string_equal(out, "new.txt\n");
    free(out);
    //  permissions: not in /etc, and not onto a directory
    up = s_upload_start("/etc/evil", false, &u);
    assert_int_equal(u.err, KB_EACCES);
    sbx_upload_abort(&up);
    up = s_upload_start("/home/user/up", false, &u);
    assert_int_equal(u.err, KB_EISDIR);
    sbx_upload_abort(&up);
}

//  A cancelled request's callback never runs.
static void test_cancel(void **state)
{
    (void) state;
    NEED_NS();
    h_fop_t f;
    memset(&f, 0, sizeof f);
    sbx_req_t *r = sbx_list(S, "root", "/usr", 3, h_on_entries, &f);
    assert_non_null(r);
    sbx_req_cancel(r);
    h_spin(300);
    assert_false(f.done);
    //  and the sandbox goes on
    H_FOP(f, sbx_stat(S, "user", "/home/user", h_on_entries, &f));
    assert_int_equal(f.err, 0);
}

typedef struct {
    bool started, ended;
    int start_err, end_err;
    char log[8192];
} h_watch_t;

static void w_start(sbx_watch_t *w, int err, const char *why, void *arg)
{
    (void) w;
    (void) why;
    h_watch_t *h = arg;
    h->start_err = err;
    h->started = true;
}

static void w_event(sbx_watch_t *w, sbx_event_t t, const char *name, bool is_dir, void *arg)
{
    (void) w;
    h_watch_t *h = arg;
    static const char *const names[] = {"", "create", "write", "remove", "rename", "chmod"};
    size_t l = strlen(h->log);
    snprintf(h->log + l, sizeof h->log - l, "%s %s%s\n", names[t], name, is_dir ? "/" : "");
}

static void w_end(sbx_watch_t *w, int err, const char *why, void *arg)
{
    (void) w;
    (void) why;
    h_watch_t *h = arg;
    h->end_err = err;
    h->ended = true;
}

static void test_watch(void **state)
{
    (void) state;
    NEED_NS();
    s_prepare("mkdir -p /home/user/w/old");
    h_watch_t h;
    memset(&h, 0, sizeof h);
    sbx_watch_events_t ev = {w_start, w_event, w_end};
    int err;
    sbx_watch_t *w = sbx_watch(S, "user", "/home/user/w", true, &ev, &h, &err);
    assert_non_null(w);
    assert_true(h_wait(&h.started, 5000));
    assert_int_equal(h.start_err, 0);
    s_prepare("cd /home/user/w && echo a > f && chmod 600 f && mv f g && mkdir sub && "
              "sleep 0.2 && echo b > sub/x && rm sub/x && echo c > old/y");
    uint64_t t0 = h_now_ms();
    while (!strstr(h.log, "create old/y") && h_now_ms() - t0 < 5000) h_spin(10);
    assert_non_null(strstr(h.log, "create f\n"));
    assert_non_null(strstr(h.log, "write f\n"));
    assert_non_null(strstr(h.log, "chmod f\n"));
    assert_non_null(strstr(h.log, "rename f\n"));
    assert_non_null(strstr(h.log, "create g\n"));
    assert_non_null(strstr(h.log, "create sub/\n"));
    assert_non_null(strstr(h.log, "create sub/x\n"));
    assert_non_null(strstr(h.log, "remove sub/x\n"));
    assert_non_null(strstr(h.log, "create old/y\n"));
    //  the directory goes: the watch ends
    s_prepare("rm -rf /home/user/w");
    assert_true(h_wait(&h.ended, 5000));
    assert_int_equal(h.end_err, KB_ENOTFOUND);
    sbx_watch_destroy(&w);
    //  errors
    memset(&h, 0, sizeof h);
    w = sbx_watch(S, "user", "/root", false, &ev, &h, &err);
    assert_true(h_wait(&h.started, 5000));
    assert_int_equal(h.start_err, KB_EACCES);
    sbx_watch_destroy(&w);
    memset(&h, 0, sizeof h);
    w = sbx_watch(S, "user", "/etc/passwd", false, &ev, &h, &err);
    assert_true(h_wait(&h.started, 5000));
    assert_int_equal(h.start_err, KB_ENOTDIR);
    sbx_watch_destroy(&w);
    //  destroyed while running: no more callbacks
    memset(&h, 0, sizeof h);
    w = sbx_watch(S, "user", "/home/user", false, &ev, &h, &err);
    assert_true(h_wait(&h.started, 5000));
    sbx_watch_destroy(&w);
    s_prepare("touch /home/user/after");
    h_spin(200);
    assert_string_equal(h.log, "");
    assert_false(h.ended);
}

//  The default sandbox: the same operations, on host paths, as kbridge's user.
static void test_none_files(void **state)
{
    (void) state;
    sbx_t *s = h_sbx_none("fnone");
    char path[400];
    snprintf(path, sizeof path, "%s/nf/a/b", H_root);
    h_fop_t f;
    H_FOP(f, sbx_mkdir(s, NULL, path, true, h_on_entries, &f));
    assert_int_equal(f.err, 0);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    snprintf(path, sizeof path, "%s/nf", H_root);
    H_FOP(f, sbx_list(s, "user", path, 2, h_on_entries, &f));
    assert_int_equal(f.err, 0);
    assert_int_equal(f.n, 2);
    H_FOP(f, sbx_remove(s, NULL, path, h_on_entries, &f));
    assert_int_equal(f.err, 0);
    assert_int_not_equal(stat(path, &st), 0);
    sbx_destroy(&s);
    h_spin(30);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stat_and_list),
        cmocka_unit_test(test_mkdir_rename_remove),
        cmocka_unit_test(test_meta),
        cmocka_unit_test(test_open_read),
        cmocka_unit_test(test_upload),
        cmocka_unit_test(test_cancel),
        cmocka_unit_test(test_watch),
        cmocka_unit_test(test_none_files),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
