/*  cmd_serve - `kbridge serve`: options, the token, signals, start and clean shutdown. */
#include "commands.h"
#include "../kernels/registry.h"
#include "../http/server.h"
#include "../config.h"
#include "../../kernelmgr/hmac.h"
#include "../../base/kberr.h"
#include "../../base/klog.h"
#include "../../base/kutil.h"
#include "../../kernelmgr/rundir.h"

#include <getopt.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    uv_loop_t *loop;
    registry_t *registry;
    server_t *server;
    uv_signal_t sigint, sigterm;
    uv_timer_t trim;
    bool stopping;
} serve_t;

//  Kernel output moves through in megabyte blocks. glibc would mmap each one and unmap it
//  on free, so every message paid for fresh page faults; large blocks now come from the
//  heap and are reused. What a burst leaves free goes back to the OS on this timer.
#define TRIM_INTERVAL_MS 5000

static void s_on_trim(uv_timer_t *timer)
{
    (void) timer;
    malloc_trim(0);
}

static void s_usage(FILE *out)
{
    fprintf(out,
            "usage: kbridge serve [options]\n\n"
            "  --ip ADDR                 listen address (default 127.0.0.1)\n"
            "  --port N                  listen port (default 49999; 0 picks a free one)\n"
            "  --token T                 access token (default $KBRIDGE_TOKEN, else generated);\n"
            "                            an empty token disables authentication\n"
            "  --allow-host NAME         accept this Host besides localhost and the listen\n"
            "                            address (repeatable; '*' accepts any)\n"
            "  --allow-origin ORIGIN     accept browser requests from this Origin (repeatable;\n"
            "                            '*' accepts any)\n"
            "  --default-kernel NAME     kernelspec used when none is named (default python3)\n"
            "  --env K=V                 environment variable for every kernel (repeatable)\n"
            "  --kernel-transport T      tcp (default) or ipc\n"
            "  --signature-scheme S      hmac-sha256 (default) or hmac-sha512\n"
            "  --no-autorestart          do not restart kernels that die\n"
            "  --keep-alive S            seconds a disconnected session lives (default 60)\n"
            "  --keep-alive-max S        most a client may ask for (default 3600)\n"
            "  --max-message-bytes N     largest WebSocket message accepted (default 16 MiB)\n"
            "  --max-body-bytes N        largest HTTP body accepted (default 16 MiB)\n"
            "  --max-outbound-bytes N    output queued for a slow client before it is\n"
            "                            disconnected (default 64 MiB)\n"
            "  --max-retained-output N   output kept in one Execution object (default 4 MiB;\n"
            "                            the stream itself always carries everything)\n"
            "  --log-level L             debug, info (default), warn, error\n");
}

static void s_on_all_down(void *arg)
{
    serve_t *st = arg;
    server_close(st->server);
    registry_destroy(&st->registry);
    uv_close((uv_handle_t *) &st->sigint, NULL);
    uv_close((uv_handle_t *) &st->sigterm, NULL);
    uv_close((uv_handle_t *) &st->trim, NULL);
}

static void s_on_signal(uv_signal_t *handle, int signum)
{
    serve_t *st = handle->data;
    if (st->stopping) {
        if (st->registry) {
            klog_warn("second signal: stopping at once");
            s_on_all_down(st);
        }
        return;
    }
    st->stopping = true;
    klog_info("%s: shutting down %zu kernel(s)", signum == SIGINT ? "SIGINT" : "SIGTERM",
              registry_count(st->registry));
    registry_shutdown_all(st->registry, s_on_all_down, st);
}

static int s_size_arg(const char *text, size_t *out)
{
    char *end;
    unsigned long long v = strtoull(text, &end, 10);
    if (*end || end == text) return -1;
    *out = (size_t) v;
    return 0;
}

int cmd_serve(int argc, char **argv)
{
    enum {
        O_IP = 256, O_PORT, O_TOKEN, O_ALLOW_HOST, O_ALLOW_ORIGIN, O_DEFAULT_KERNEL, O_ENV,
        O_TRANSPORT, O_NO_AUTORESTART, O_KEEP_ALIVE, O_KEEP_ALIVE_MAX, O_MAX_MESSAGE, O_MAX_BODY,
        O_MAX_OUTBOUND, O_MAX_RETAINED, O_LOG_LEVEL, O_SCHEME, O_HELP
    };
    static const struct option longopts[] = {
        {"ip", required_argument, NULL, O_IP},
        {"port", required_argument, NULL, O_PORT},
        {"token", required_argument, NULL, O_TOKEN},
        {"allow-host", required_argument, NULL, O_ALLOW_HOST},
        {"allow-origin", required_argument, NULL, O_ALLOW_ORIGIN},
        {"default-kernel", required_argument, NULL, O_DEFAULT_KERNEL},
        {"env", required_argument, NULL, O_ENV},
        {"kernel-transport", required_argument, NULL, O_TRANSPORT},
        {"no-autorestart", no_argument, NULL, O_NO_AUTORESTART},
        {"keep-alive", required_argument, NULL, O_KEEP_ALIVE},
        {"keep-alive-max", required_argument, NULL, O_KEEP_ALIVE_MAX},
        {"max-message-bytes", required_argument, NULL, O_MAX_MESSAGE},
        {"max-body-bytes", required_argument, NULL, O_MAX_BODY},
        {"max-outbound-bytes", required_argument, NULL, O_MAX_OUTBOUND},
        {"max-retained-output", required_argument, NULL, O_MAX_RETAINED},
        {"log-level", required_argument, NULL, O_LOG_LEVEL},
        {"signature-scheme", required_argument, NULL, O_SCHEME},
        {"help", no_argument, NULL, O_HELP},
        {NULL, 0, NULL, 0}};
    config_t cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.ip = "127.0.0.1";
    cfg.port = 49999;
    cfg.max_message_bytes = 16u << 20;
    cfg.max_body_bytes = 16u << 20;
    cfg.max_outbound_bytes = 64u << 20;
    cfg.max_retained_output = 4u << 20;
    cfg.max_buffered_bytes = 1024u << 20;
    cfg.max_pending_per_peer = 32;
    cfg.header_timeout_ms = 10000;
    cfg.idle_timeout_ms = 75000;
    cfg.keep_alive_ms = 60000;
    cfg.keep_alive_max_ms = 3600000;
    cfg.allowed_hosts = json_array();
    cfg.allowed_origins = json_array();
    const char *token = getenv("KBRIDGE_TOKEN");
    const char *default_kernel = getenv("KBRIDGE_DEFAULT_KERNEL");
    const char *transport = "tcp";
    const char *scheme = "hmac-sha256";
    bool autorestart = true;
    json_t *env = json_object();
    int rc = 2, c;
    size_t n;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (c) {
        case O_IP: cfg.ip = optarg; break;
        case O_PORT: cfg.port = atoi(optarg); break;
        case O_TOKEN: token = optarg; break;
        case O_ALLOW_HOST: json_array_append_new(cfg.allowed_hosts, json_string(optarg)); break;
        case O_ALLOW_ORIGIN: json_array_append_new(cfg.allowed_origins, json_string(optarg)); break;
        case O_DEFAULT_KERNEL: default_kernel = optarg; break;
        case O_ENV: {
            const char *eq = strchr(optarg, '=');
            if (!eq || eq == optarg) {
                fprintf(stderr, "kbridge: --env wants KEY=VALUE, got '%s'\n", optarg);
                goto done;
            }
            char *key = strndup(optarg, (size_t) (eq - optarg));
            json_object_set_new(env, key, json_string(eq + 1));
            free(key);
            break;
        }
        case O_TRANSPORT: transport = optarg; break;
        case O_SCHEME: scheme = optarg; break;
        case O_NO_AUTORESTART: autorestart = false; break;
        case O_KEEP_ALIVE:
            if (s_size_arg(optarg, &n)) goto bad;
            cfg.keep_alive_ms = (uint64_t) n * 1000u;
            break;
        case O_KEEP_ALIVE_MAX:
            if (s_size_arg(optarg, &n)) goto bad;
            cfg.keep_alive_max_ms = (uint64_t) n * 1000u;
            break;
        case O_MAX_MESSAGE: if (s_size_arg(optarg, &cfg.max_message_bytes)) goto bad; break;
        case O_MAX_BODY: if (s_size_arg(optarg, &cfg.max_body_bytes)) goto bad; break;
        case O_MAX_OUTBOUND: if (s_size_arg(optarg, &cfg.max_outbound_bytes)) goto bad; break;
        case O_MAX_RETAINED: if (s_size_arg(optarg, &cfg.max_retained_output)) goto bad; break;
        case O_LOG_LEVEL: {
            int level = klog_parse_level(optarg);
            if (level < 0) goto bad;
            klog_set_level((klog_level_t) level);
            break;
        }
        case O_HELP: s_usage(stdout); rc = 0; goto done;
        default: s_usage(stderr); goto done;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "kbridge: unexpected argument '%s'\n", argv[optind]);
        goto done;
    }
    if (strcmp(transport, "tcp") != 0 && strcmp(transport, "ipc") != 0) {
        fprintf(stderr, "kbridge: --kernel-transport must be tcp or ipc\n");
        goto done;
    }
    if (cfg.keep_alive_ms > cfg.keep_alive_max_ms) cfg.keep_alive_ms = cfg.keep_alive_max_ms;
    hmac_t *probe = hmac_new(scheme, "k", 1, NULL);
    if (!probe) {
        fprintf(stderr, "kbridge: unsupported signature scheme '%s' (hmac-sha256 or hmac-sha512)\n", scheme);
        goto done;
    }
    hmac_destroy(&probe);

    char generated[49];
    if (!token) {
        kb_random_hex(generated, 24);
        token = generated;
    }
    cfg.token = token;
    if (!*token)
        klog_warn("AUTHENTICATION IS DISABLED (empty token): anyone who can reach %s:%d can run "
                  "code as this user", cfg.ip, cfg.port);
    const char *kernel_name = default_kernel && *default_kernel ? default_kernel : "python3";
    kspec_t *spec = kspec_find(kernel_name, NULL);
    if (!spec) {
        fprintf(stderr, "kbridge: the default kernel '%s' is not installed\n", kernel_name);
        rc = 1;
        goto done;
    }
    kspec_destroy(&spec);

    rundir_t *rundir = rundir_new(NULL);
    if (!rundir) {
        rc = 1;
        goto done;
    }
    serve_t st;
    memset(&st, 0, sizeof st);
    st.loop = uv_default_loop();
    registry_config_t rcfg = {rundir_path(rundir), kbridge_exe_path(), env, transport, kernel_name,
                              autorestart, scheme};
    st.registry = registry_new(st.loop, &rcfg);
    char why[256] = "out of memory";
    api_ctx_t ctx = {st.loop, st.registry, &cfg};
    st.server = st.registry ? server_new(&ctx, why, sizeof why) : NULL;
    if (!st.server) {
        fprintf(stderr, "kbridge: %s\n", why);
        registry_destroy(&st.registry);
        uv_run(st.loop, UV_RUN_DEFAULT);
        rundir_destroy(&rundir);
        rc = 1;
        goto done;
    }
    uv_signal_init(st.loop, &st.sigint);
    uv_signal_init(st.loop, &st.sigterm);
    st.sigint.data = st.sigterm.data = &st;
    uv_signal_start(&st.sigint, s_on_signal, SIGINT);
    uv_signal_start(&st.sigterm, s_on_signal, SIGTERM);
    signal(SIGPIPE, SIG_IGN);
    mallopt(M_MMAP_THRESHOLD, 256 << 20);
    mallopt(M_TRIM_THRESHOLD, 512 << 20);
    uv_timer_init(st.loop, &st.trim);
    uv_timer_start(&st.trim, s_on_trim, TRIM_INTERVAL_MS, TRIM_INTERVAL_MS);
    uv_unref((uv_handle_t *) &st.trim);

    int port = server_port(st.server);
    const char *host = strchr(cfg.ip, ':') ? "[::1]" : strcmp(cfg.ip, "0.0.0.0") == 0 ? "127.0.0.1" : cfg.ip;
    printf("kbridge %s listening on http://%s:%d/ (default kernel: %s)\n", PROJECT_VERSION, host,
           port, kernel_name);
    if (*token)
        printf("  WebSocket API: ws://%s:%d/ws?token=%s\n  Jupyter API:   http://%s:%d/api/kernels?token=%s\n",
               host, port, token, host, port, token);
    else
        printf("  WebSocket API: ws://%s:%d/ws\n  Jupyter API:   http://%s:%d/api/kernels\n", host,
               port, host, port);
    fflush(stdout);

    uv_run(st.loop, UV_RUN_DEFAULT);
    server_destroy(&st.server);
    uv_run(st.loop, UV_RUN_DEFAULT);
    rundir_destroy(&rundir);
    if (uv_loop_close(st.loop) != 0) klog_debug("loop closed with handles still open");
    klog_info("stopped");
    rc = 0;
    goto done;
bad:
    fprintf(stderr, "kbridge: bad value '%s'\n", optarg);
done:
    json_decref(cfg.allowed_hosts);
    json_decref(cfg.allowed_origins);
    json_decref(env);
    return rc;
}
