/*  Unit tests: kernelspec discovery, templating, env expansion; connection files. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "kernelmgr/connfile.h"
#include "base/jx.h"
#include "base/kberr.h"
#include "base/klog.h"
#include "kernelmgr/kspec.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char s_tmp[128];

static void s_write(const char *rel, const char *text)
{
    char path[512], cmd[600];
    snprintf(path, sizeof path, "%s/%s", s_tmp, rel);
    snprintf(cmd, sizeof cmd, "mkdir -p \"$(dirname '%s')\"", path);
    assert_int_equal(system(cmd), 0);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static int s_setup(void **state)
{
    (void) state;
    snprintf(s_tmp, sizeof s_tmp, "/tmp/kb-kspec-XXXXXX");
    assert_non_null(mkdtemp(s_tmp));
    s_write("a/kernels/echo/kernel.json",
            "{\"argv\": [\"prog\", \"-f\", \"{connection_file}\", \"{resource_dir}/x\", \"{unknown}\", "
            "\"{{literal}}\"], \"display_name\": \"Echo\", \"language\": \"python\", "
            "\"env\": {\"A\": \"${KB_TEST_VAR}-suffix\", \"B\": \"${KB_NOT_SET}\"}}");
    s_write("a/kernels/echo/logo-64x64.png", "png");
    s_write("b/kernels/echo/kernel.json", "{\"argv\": [\"other\"], \"display_name\": \"Shadowed\", \"language\": \"x\"}");
    s_write("b/kernels/Mixed.Case/kernel.json", "{\"argv\": [\"m\"], \"display_name\": \"M\", \"language\": \"r\", \"interrupt_mode\": \"message\"}");
    s_write("b/kernels/broken/kernel.json", "{\"argv\": \"not a list\", \"language\": \"x\"}");
    s_write("b/kernels/badjson/kernel.json", "{nope");
    char jp[300];
    snprintf(jp, sizeof jp, "%s/a:%s/b", s_tmp, s_tmp);
    setenv("JUPYTER_PATH", jp, 1);
    setenv("KB_TEST_VAR", "value", 1);
    return 0;
}

static int s_teardown(void **state)
{
    (void) state;
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", s_tmp);
    assert_int_equal(system(cmd), 0);
    unsetenv("JUPYTER_PATH");
    return 0;
}

static void test_find_template_env(void **state)
{
    (void) state;
    int err;
    kspec_t *k = kspec_find("ECHO", &err);
    assert_non_null(k);
    assert_string_equal(kspec_display_name(k), "Echo");  //  first dir wins
    char **argv = kspec_format_argv(k, "/run/conn.json");
    assert_string_equal(argv[2], "/run/conn.json");
    char expect[512];
    snprintf(expect, sizeof expect, "%s/a/kernels/echo/x", s_tmp);
    char *real = realpath(s_tmp, NULL);
    snprintf(expect, sizeof expect, "%s/a/kernels/echo/x", real);
    free(real);
    assert_string_equal(argv[3], expect);
    assert_string_equal(argv[4], "{unknown}");
    assert_null(argv[6]);
    kspec_argv_free(argv);
    json_t *env = kspec_env(k);
    assert_string_equal(json_string_value(json_object_get(env, "A")), "value-suffix");
    assert_string_equal(json_string_value(json_object_get(env, "B")), "${KB_NOT_SET}");
    json_decref(env);
    assert_non_null(json_object_get(kspec_resources(k), "logo-64x64"));
    assert_int_equal(kspec_interrupt_mode(k), KSPEC_INTERRUPT_SIGNAL);
    kspec_destroy(&k);
    assert_null(k);
}

static void test_names_and_invalid_specs(void **state)
{
    (void) state;
    int err;
    kspec_t *k = kspec_find("mixed.case", &err);
    assert_non_null(k);
    assert_string_equal(kspec_name(k), "mixed.case");
    assert_int_equal(kspec_interrupt_mode(k), KSPEC_INTERRUPT_MESSAGE);
    kspec_destroy(&k);
    assert_null(kspec_find("broken", &err));
    assert_int_equal(err, KB_EINVAL);
    assert_null(kspec_find("badjson", &err));
    assert_null(kspec_find("nope", &err));
    assert_int_equal(err, KB_ENOTFOUND);
    assert_null(kspec_find("../a/kernels/echo", &err));
    assert_null(kspec_find("", &err));
    kspec_t **list;
    size_t n = kspec_list(&list);
    int saw_echo = 0, saw_mixed = 0;
    for (size_t i = 0; i < n; i++) {
        saw_echo += strcmp(kspec_name(list[i]), "echo") == 0;
        saw_mixed += strcmp(kspec_name(list[i]), "mixed.case") == 0;
        assert_string_not_equal(kspec_name(list[i]), "broken");
    }
    assert_int_equal(saw_echo, 1);
    assert_int_equal(saw_mixed, 1);
    kspec_list_destroy(&list, n);
}

static void test_connection_file(void **state)
{
    (void) state;
    int err;
    connfile_t *cf = connfile_new(&(connfile_opts_t){"kid", "python3", "tcp", NULL, NULL, s_tmp, -1, NULL, (uid_t) -1, (gid_t) -1}, &err);
    assert_non_null(cf);
    struct stat st;
    assert_int_equal(stat(connfile_path(cf), &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    json_t *doc = json_load_file(connfile_path(cf), 0, NULL);
    assert_non_null(doc);
    int ports[5];
    const char *names[5] = {"shell_port", "iopub_port", "stdin_port", "control_port", "hb_port"};
    for (int i = 0; i < 5; i++) {
        ports[i] = (int) json_integer_value(json_object_get(doc, names[i]));
        assert_true(ports[i] > 0);
        for (int j = 0; j < i; j++) assert_int_not_equal(ports[i], ports[j]);
    }
    assert_string_equal(json_string_value(json_object_get(doc, "key")), connfile_key(cf));
    assert_string_equal(json_string_value(json_object_get(doc, "signature_scheme")), "hmac-sha256");
    char endpoint[64];
    snprintf(endpoint, sizeof endpoint, "tcp://127.0.0.1:%d", ports[0]);
    assert_string_equal(connfile_endpoint(cf, KCH_SHELL), endpoint);
    json_decref(doc);
    char path[512];
    snprintf(path, sizeof path, "%s", connfile_path(cf));
    connfile_destroy(&cf, true);
    assert_int_not_equal(access(path, F_OK), 0);

    cf = connfile_new(&(connfile_opts_t){"kid2", "python3", "ipc", NULL, "hmac-sha512", s_tmp, -1, NULL, (uid_t) -1, (gid_t) -1}, &err);
    assert_non_null(cf);
    assert_non_null(strstr(connfile_endpoint(cf, KCH_IOPUB), "ipc://"));
    assert_string_equal(connfile_scheme(cf), "hmac-sha512");
    connfile_destroy(&cf, true);
    assert_null(connfile_new(&(connfile_opts_t){"kid3", "python3", "udp", NULL, NULL, s_tmp, -1, NULL, (uid_t) -1, (gid_t) -1}, &err));
    assert_int_equal(err, KB_EINVAL);
    assert_null(connfile_new(&(connfile_opts_t){"kid4", "python3", "tcp", NULL, "hmac-md5", s_tmp, -1, NULL, (uid_t) -1, (gid_t) -1}, &err));
    assert_int_equal(err, KB_ESCHEME);
}

//  Kernels starting together must not share ports: a port released by one connfile's
//  probe used to be handed by bind(0) to the next while the first kernel had yet to bind
//  it. 300 live connfiles (1,500 ports) collide almost surely if nothing prevents it.
static void test_live_connfiles_never_share_ports(void **state)
{
    (void) state;
    enum { N = 300 };
    static connfile_t *files[N];
    static unsigned char seen[65536];
    memset(seen, 0, sizeof seen);
    for (int round = 0; round < 2; round++) {
        for (int i = 0; i < N; i++) {
            char id[32];
            snprintf(id, sizeof id, "many-%d", i);
            int err;
            files[i] = connfile_new(&(connfile_opts_t){id, "python3", "tcp", NULL, NULL, s_tmp, -1, NULL, (uid_t) -1, (gid_t) -1}, &err);
            assert_non_null(files[i]);
            for (int c = 0; c < KCH_COUNT; c++) {
                int port = atoi(strrchr(connfile_endpoint(files[i], (kchan_type_t) c), ':') + 1);
                assert_true(port > 0 && port < 65536);
                if (seen[port] == round + 1) fail_msg("port %d handed out twice", port);
                seen[port] = (unsigned char) (round + 1);
            }
        }
        //  Destroyed files give their ports back: the second round must not run dry.
        for (int i = 0; i < N; i++) connfile_destroy(&files[i], true);
    }
}

//  {prefix} is the prefix the spec is installed under (a venv's, say), as jupyter_client's
//  sys.prefix would be for a spec installed with `jupyter kernelspec install --prefix`.
static void test_prefix_is_the_specs_own(void **state)
{
    (void) state;
    s_write("venv/share/jupyter/kernels/py/kernel.json",
            "{\"argv\": [\"{prefix}/bin/python\", \"-f\", \"{connection_file}\"], "
            "\"display_name\": \"V\", \"language\": \"python\"}");
    char dir[300], want[320];
    snprintf(dir, sizeof dir, "%s/venv/share/jupyter/kernels/py", s_tmp);
    int err;
    kspec_t *spec = kspec_load(dir, "py", &err);
    assert_non_null(spec);
    char **argv = kspec_format_argv(spec, "/c.json");
    char *real = realpath(s_tmp, NULL);
    snprintf(want, sizeof want, "%s/venv/bin/python", real);
    free(real);
    assert_string_equal(argv[0], want);
    kspec_argv_free(argv);
    kspec_destroy(&spec);
    //  Elsewhere: /usr, as Debian's system Python.
    snprintf(dir, sizeof dir, "%s/a/kernels/echo", s_tmp);
    s_write("a/kernels/pfx/kernel.json", "{\"argv\": [\"{prefix}/bin/x\"], \"display_name\": \"P\", \"language\": \"x\"}");
    snprintf(dir, sizeof dir, "%s/a/kernels/pfx", s_tmp);
    spec = kspec_load(dir, "pfx", &err);
    assert_non_null(spec);
    argv = kspec_format_argv(spec, "/c.json");
    assert_string_equal(argv[0], "/usr/bin/x");
    kspec_argv_free(argv);
    kspec_destroy(&spec);
}

int main(void)
{
    klog_set_level(KLOG_QUIET);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_find_template_env),
        cmocka_unit_test(test_names_and_invalid_specs),
        cmocka_unit_test(test_connection_file),
        cmocka_unit_test(test_live_connfiles_never_share_ports),
        cmocka_unit_test(test_prefix_is_the_specs_own),
    };
    return cmocka_run_group_tests(tests, s_setup, s_teardown);
}
