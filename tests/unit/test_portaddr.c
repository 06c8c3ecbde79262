/*  Unit tests: the port proxy's names (bridge/apikit/portaddr.h), host and path forms,
    and what is not one of them. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "bridge/apikit/portaddr.h"

#include <string.h>

static void test_host_form(void **state)
{
    (void) state;
    config_t cfg;
    memset(&cfg, 0, sizeof cfg);
    char id[PORTADDR_ID_MAX + 1];
    int port = 0;
    assert_true(portaddr_parse_host(&cfg, "8000-kbabc123.localhost:49999", &port, id, sizeof id));
    assert_int_equal(port, 8000);
    assert_string_equal(id, "kbabc123");
    assert_true(portaddr_parse_host(&cfg, "1-default.LOCALHOST", &port, id, sizeof id));
    assert_int_equal(port, 1);
    assert_string_equal(id, "default");
    assert_true(portaddr_parse_host(&cfg, "65535-x.localhost", &port, id, sizeof id));
    //  Not ports: bad numbers, ids, shapes, other domains.
    const char *bad[] = {"0-x.localhost", "65536-x.localhost", "080-x.localhost", "-x.localhost",
                         "8000-.localhost", "8000-a_b.localhost", "8000-a-b.localhost",
                         "8000x.localhost", "localhost:49999", "8000-x", "8000-x.example.com",
                         "8000-x.y.localhost", "a8000-x.localhost",
                         "8000-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.localhost",  //  33 characters
                         "", NULL};
    for (size_t i = 0; bad[i]; i++) assert_false(portaddr_parse_host(&cfg, bad[i], &port, id, sizeof id));
    assert_false(portaddr_parse_host(&cfg, NULL, &port, id, sizeof id));
    //  --domain: its host name, and localhost still.
    cfg.domain = "sbx.example.com:443";
    assert_true(portaddr_parse_host(&cfg, "3000-abc.sbx.example.com", &port, id, sizeof id));
    assert_int_equal(port, 3000);
    assert_true(portaddr_parse_host(&cfg, "3000-abc.localhost", &port, id, sizeof id));
    assert_false(portaddr_parse_host(&cfg, "3000-abc.example.com", &port, id, sizeof id));
    assert_false(portaddr_parse_host(&cfg, "3000-abc.evil-sbx.example.com", &port, id, sizeof id));
}

static void test_path_form(void **state)
{
    (void) state;
    char id[PORTADDR_ID_MAX + 1];
    int port = 0;
    const char *rest = NULL;
    assert_true(portaddr_parse_path("/sandboxes/kb1/ports/8000/a/b", &port, id, sizeof id, &rest));
    assert_int_equal(port, 8000);
    assert_string_equal(id, "kb1");
    assert_string_equal(rest, "/a/b");
    assert_true(portaddr_parse_path("/sandboxes/kb1/ports/8000", &port, id, sizeof id, &rest));
    assert_string_equal(rest, "");
    assert_true(portaddr_parse_path("/sandboxes/kb1/ports/8000/", &port, id, sizeof id, &rest));
    assert_string_equal(rest, "/");
    const char *bad[] = {"/sandboxes/kb1", "/sandboxes/kb1/ports/", "/sandboxes/kb1/ports/0/",
                         "/sandboxes/kb1/ports/99999/", "/sandboxes/kb1/ports/80x/",
                         "/sandboxes/KB1/ports/80/", "/sandboxes//ports/80/",
                         "/sandboxes/kb1/timeout", "/v2/sandboxes/kb1/ports/80/",
                         "/sandboxes/kb1/port/80/", "/sandboxes/k%62/ports/80/", NULL};
    for (size_t i = 0; bad[i]; i++)
        assert_false(portaddr_parse_path(bad[i], &port, id, sizeof id, &rest));
    assert_false(portaddr_parse_path(NULL, &port, id, sizeof id, &rest));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_host_form),
        cmocka_unit_test(test_path_form),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
