/*  Sandbox tests: lifecycle edges. The agent dying under us (everything pending fails
    with KB_ECLOSED, on_lost comes), destroy from inside callbacks, log_output, the probe,
    a directory template, bad options. */
#include "harness.h"

static bool s_root;

static int setup(void **state)
{
    (void) state;
    h_setup_root("life");
    s_root = geteuid() == 0;
    return 0;
}

static int teardown(void **state)
{
    (void) state;
    h_teardown_root();
    return 0;
}

static void test_agent_lost(void **state)
{
    (void) state;
    h_sbx_state_t *st = &H_states[H_nstates % 16];
    sbx_t *s = h_sbx_none("lost");
    h_run_t r;
    proc_t *p = h_start(s, NULL, "echo up; exec sleep 1000", &r);
    uint64_t t0 = h_now_ms();
    while (!r.out && h_now_ms() - t0 < 5000) h_spin(10);
    assert_non_null(r.out);
    h_fop_t f;
    memset(&f, 0, sizeof f);
    //  a request still in flight when the agent dies (a FIFO open blocks nothing, so use
    //  a slow listing instead: it is cancelled by the loss either way)
    kill(sbx_agent_pid(s), SIGKILL);
    assert_true(h_wait(&st->lost, 5000));
    assert_true(h_wait(&r.exited, 5000));
    assert_false(r.exit.exited);
    assert_int_equal(r.exit.signal, SIGKILL);
    assert_false(sbx_ready(s));
    //  nothing new is accepted
    int err;
    const char *argv[] = {"/bin/true", NULL};
    proc_opts_t o = {.argv = argv};
    assert_null(proc_spawn(s, &o, &H_events, &r, &err));
    assert_int_equal(err, KB_ECLOSED);
    assert_null(sbx_stat(s, NULL, "/", h_on_entries, &f));
    proc_destroy(&p);
    h_run_free(&r);
    sbx_destroy(&s);
    h_spin(20);
}

//  Requests pending at destroy fail with KB_ECLOSED, from a later turn.
static void test_destroy_fails_pending(void **state)
{
    (void) state;
    sbx_t *s = h_sbx_none("pend");
    h_fop_t f;
    memset(&f, 0, sizeof f);
    sbx_req_t *req = sbx_list(s, NULL, "/usr", 4, h_on_entries, &f);
    assert_non_null(req);
    h_run_t r;
    memset(&r, 0, sizeof r);
    const char *argv[] = {"/bin/sleep", "100", NULL};
    proc_opts_t o = {.argv = argv, .env = H_env};
    int err;
    proc_t *p = proc_spawn(s, &o, &H_events, &r, &err);
    sbx_destroy(&s);
    assert_null(s);
    assert_false(f.done);  //  not from inside sbx_destroy
    assert_true(h_wait(&f.done, 5000));
    assert_int_equal(f.err, KB_ECLOSED);
    assert_true(h_wait(&r.started, 5000));
    assert_int_equal(r.start_err, KB_ECLOSED);
    proc_destroy(&p);
    h_spin(20);
}

static sbx_t *s_victim;
static proc_t *s_victim_proc;

static void destroy_on_exit(proc_t *p, const proc_exit_t *e, void *arg)
{
    (void) e;
    h_run_t *r = arg;
    r->exited = true;
    proc_destroy(&s_victim_proc);  //  itself, from inside its own callback
    sbx_destroy(&s_victim);        //  and its sandbox
    (void) p;
}

static void test_destroy_from_callbacks(void **state)
{
    (void) state;
    s_victim = h_sbx_none("cbdestroy");
    h_run_t r;
    memset(&r, 0, sizeof r);
    const char *argv[] = {"/bin/echo", "x", NULL};
    proc_opts_t o = {.argv = argv, .env = H_env};
    proc_events_t ev = {h_on_start, h_on_output, destroy_on_exit};
    int err;
    s_victim_proc = proc_spawn(s_victim, &o, &ev, &r, &err);
    assert_true(h_wait(&r.exited, 5000));
    assert_null(s_victim);
    assert_null(s_victim_proc);
    h_run_free(&r);
    h_spin(20);
}

static void test_log_output(void **state)
{
    (void) state;
    sbx_t *s = h_sbx_none("logout");
    h_run_t r;
    memset(&r, 0, sizeof r);
    const char *argv[] = {"/bin/sh", "-c", "echo to-the-log; echo err-line >&2", NULL};
    proc_opts_t o = {.argv = argv, .env = H_env, .log_output = true, .label = "kernel t1"};
    int err;
    proc_t *p = proc_spawn(s, &o, &H_events, &r, &err);
    assert_true(h_wait(&r.exited, 5000));
    assert_null(r.out);  //  into klog, not on_output
    assert_true(r.exit.exited);
    proc_destroy(&p);
    sbx_destroy(&s);
    h_spin(20);
}

static void test_probe_and_options(void **state)
{
    (void) state;
    char why[512];
    int rc = sbx_probe(H_agent, why, sizeof why);
    if (s_root) assert_int_equal(rc, 0);
    else assert_non_null(strstr(why, "root"));
    assert_int_equal(sbx_probe("/nonexistent/agent", why, sizeof why),
                     s_root ? KB_EINVAL : KB_EINVAL);
    if (s_root) assert_non_null(strstr(why, "/nonexistent/agent"));
    //  bad options
    int err;
    sbx_opts_t o = {.id = "Bad-Id", .agent_path = H_agent};
    assert_null(sbx_new(H_loop, &o, NULL, NULL, &err));
    assert_int_equal(err, KB_EINVAL);
    o.id = "ok";
    o.agent_path = "/nonexistent/agent";
    assert_null(sbx_new(H_loop, &o, NULL, NULL, &err));
    assert_int_equal(err, KB_ESPAWN);
    o.agent_path = H_agent;
    o.isolation = SBX_ISOLATION_NAMESPACES;  //  no template, no state
    assert_null(sbx_new(H_loop, &o, NULL, NULL, &err));
    assert_int_equal(err, KB_EINVAL);
    //  templates
    char why2[256];
    assert_null(template_new_dir("t", "/nonexistent", why2, sizeof why2, &err));
    assert_int_equal(err, KB_ENOTFOUND);
    assert_null(template_new_dir("t", "/proc/self", why2, sizeof why2, &err));
    assert_int_equal(err, KB_EINVAL);
    assert_non_null(strstr(why2, "not a root filesystem"));
}

//  A directory template: one overlay over it; writes land in the state, never in it.
static void test_dir_template(void **state)
{
    (void) state;
    if (!s_root) skip();
    char t[300], cmd[2048];
    snprintf(t, sizeof t, "%s/rootfs", H_root);
    snprintf(cmd, sizeof cmd,
             "set -e; T=%s; mkdir -p $T/usr/bin $T/usr/lib/x86_64-linux-gnu $T/etc $T/lib64; "
             "cp /bin/dash $T/usr/bin/sh; cp /bin/cat /bin/ls /bin/id $T/usr/bin/; ln -s usr/bin "
             "$T/bin; "
             "for l in $(ldd /bin/dash /bin/cat /bin/ls /bin/id | grep -o '/lib[^ ]*' | sort -u); "
             "do cp -L $l $T$l 2>/dev/null || "
             "cp -L $l $T/usr$l; done; ln -sf ../usr/lib $T/lib; "
             "cp /lib64/ld-linux-x86-64.so.2 $T/lib64/; "
             "printf 'root:x:0:0:root:/root:/bin/sh\\nold:x:1000:1000::/home/old:/bin/sh\\n' > "
             "$T/etc/passwd; "
             "printf 'root:x:0:\\nold:x:1000:\\n' > $T/etc/group; printf 'root:$6$hash:1::::::\\n' "
             "> $T/etc/shadow",
             t);
    assert_int_equal(system(cmd), 0);
    char why[256];
    int err;
    template_t *tmpl = template_new_dir("mini", t, why, sizeof why, &err);
    if (!tmpl) fail_msg("template: %s", why);
    assert_false(template_is_host(tmpl));
    assert_string_equal(template_dir(tmpl), t);
    sbx_opts_t o;
    h_ns_opts(&o, "mini");
    o.tmpl = tmpl;
    sbx_t *s = h_sbx_opts(&o);
    char *out =
        h_sh(s, "user",
             "id -u; cat /etc/passwd; cat /etc/shadow >/dev/null 2>&1 || echo denied; ls /home");
    assert_string_equal(out, "1000\nroot:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/"
                             "user:/bin/bash\ndenied\nuser\n");
    free(out);
    out = h_sh(s, "root", "cat /etc/shadow; echo new > /usr/bin/added; ls /usr/bin/added");
    assert_string_equal(out,
                        "root:*:20000:0:99999:7:::\nuser:*:20000:0:99999:7:::\n/usr/bin/added\n");
    free(out);
    struct stat st;
    char p[400];
    snprintf(p, sizeof p, "%s/usr/bin/added", t);
    assert_int_not_equal(stat(p, &st), 0);
    snprintf(p, sizeof p, "%s/upper/usr/bin/added", o.state_dir);
    assert_int_equal(stat(p, &st), 0);
    assert_int_equal(st.st_uid, o.uid_base);
    sbx_destroy(&s);
    h_spin(50);
    template_destroy(&tmpl);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_agent_lost),
        cmocka_unit_test(test_destroy_fails_pending),
        cmocka_unit_test(test_destroy_from_callbacks),
        cmocka_unit_test(test_log_output),
        cmocka_unit_test(test_probe_and_options),
        cmocka_unit_test(test_dir_template),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
