/*  cmd_serve - `kbridge serve`: options, the token, signals, start and clean shutdown. */
#include "commands.h"
#include "hostsbx.h"
#include "options.h"
#include "../kernels/registry.h"
#include "../sandboxes/sandboxes.h"
#include "../http/server.h"
#include "../config.h"
#include "../../kernelmgr/hmac.h"
#include "../../kernelmgr/kspec.h"
#include "../../base/kberr.h"
#include "../../base/klog.h"
#include "../../base/kutil.h"
#include "../../kernelmgr/rundir.h"

#include <errno.h>
#include <sodium.h>
#include <fcntl.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/sysinfo.h>
#include <unistd.h>

typedef struct {
    uv_loop_t *loop;
    registry_t *registry;
    sandboxes_t *sandboxes;
    server_t *server;
    sbx_t *host;  //  the default sandbox's, unless --isolate-default
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

static void s_on_all_down(void *arg)
{
    serve_t *st = arg;
    server_close(st->server);
    //  Sandboxes first: their kernels go with them, from the registry still there.
    sandboxes_destroy(&st->sandboxes);
    registry_destroy(&st->registry);
    sbx_destroy(&st->host);
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

//  Read a token file: its first line, without the newline. Returns NULL with why set.
//  Caller owns return value.
static char *s_read_token_file(const char *path, char *why, size_t size)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(why, size, "--token-file %s: %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) == 0 && (st.st_mode & 0044))
        klog_warn("token file %s is readable by other users (chmod 600 it)", path);
    char buf[1024];
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n < 0) {
        snprintf(why, size, "--token-file %s: %s", path, strerror(errno));
        return NULL;
    }
    buf[n] = '\0';
    buf[strcspn(buf, "\r\n")] = '\0';
    return strdup(buf);
}

//  The installed kernelspecs, for "the default kernel is not installed" messages.
static void s_installed(char *out, size_t size)
{
    kspec_t **specs;
    size_t n = kspec_list(&specs);
    out[0] = '\0';
    for (size_t i = 0; i < n; i++) {
        strncat(out, i ? ", " : "", size - strlen(out) - 1);
        strncat(out, kspec_name(specs[i]), size - strlen(out) - 1);
    }
    if (!n) snprintf(out, size, "none (install python3-ipykernel)");
    kspec_list_destroy(&specs, n);
}

//  --pool-kernels: "N" (the default kernelspec) and "NAME=N", comma-separated, each N in
//  0..64, each kernelspec installed and named once. Counts go to *def_n (the default's)
//  and to others (name -> count). Returns false with why on a bad list.
static bool s_parse_pool_kernels(const char *text, const char *default_kernel, uint64_t *def_n,
                                 json_t *others, char *why, size_t size)
{
    bool seen_default = false;
    const char *p = text;
    while (true) {
        size_t len = strcspn(p, ",");
        char item[160];
        if (len == 0 || len >= sizeof item) {
            snprintf(why, size, "--pool-kernels: '%.100s' is not N or NAME=N, comma-separated", text);
            return false;
        }
        memcpy(item, p, len);
        item[len] = '\0';
        char *eq = strchr(item, '=');
        const char *name = eq ? item : default_kernel, *count = eq ? eq + 1 : item;
        if (eq) *eq = '\0';
        char *end;
        unsigned long n = *count >= '0' && *count <= '9' ? strtoul(count, &end, 10) : 0;
        if (!(*count >= '0' && *count <= '9') || *end || n > 64 || !*name) {
            snprintf(why, size, "--pool-kernels: '%.*s' is not N or NAME=N with N from 0 to 64",
                     (int) (len > 100 ? 100 : len), p);
            return false;
        }
        kspec_t *spec = kspec_find(name, NULL);
        if (!spec) {
            char installed[256];
            s_installed(installed, sizeof installed);
            snprintf(why, size, "--pool-kernels: no kernelspec named '%.64s' (installed: %.255s)", name, installed);
            return false;
        }
        kspec_destroy(&spec);
        bool is_default = strcmp(name, default_kernel) == 0;
        if (is_default ? seen_default : json_object_get(others, name) != NULL) {
            snprintf(why, size, "--pool-kernels: '%.64s' is given twice", name);
            return false;
        }
        if (is_default) {
            seen_default = true;
            *def_n = n;
        } else {
            json_object_set_new(others, name, json_integer((json_int_t) n));
        }
        if (!p[len]) return true;
        p += len + 1;
    }
}

static void s_banner(const config_t *cfg, int port, const char *token, const char *kernel,
                     sbx_isolation_t iso, const char *state_dir)
{
    const char *host = strchr(cfg->ip, ':') ? "[::1]"
                       : strcmp(cfg->ip, "0.0.0.0") == 0 ? "127.0.0.1" : cfg->ip;
    bool auth = token && *token;
    //  The console's URL first: the one line a person needs (the token in the fragment never
    //  reaches a request, a log or a Referer).
    printf("kbridge %s listening on http://%s:%d/%s%s (default kernel: %s)\n", PROJECT_VERSION, host,
           port, auth ? "#token=" : "", auth ? token : "", kernel);
    printf("  WebSocket API: ws://%s:%d/ws%s%s\n", host, port, auth ? "?token=" : "", auth ? token : "");
    printf("  Jupyter API:   http://%s:%d/api/kernels%s%s\n", host, port, auth ? "?token=" : "",
           auth ? token : "");
    printf("  E2B API:       E2B_SANDBOX_URL=http://%s:%d%s\n", host, port,
           auth ? " (the token goes in E2B-Traffic-Access-Token)" : "");
    char domain[300];
    snprintf(domain, sizeof domain, "%s", cfg->domain && *cfg->domain ? cfg->domain : "");
    if (!*domain) snprintf(domain, sizeof domain, "localhost:%d", port);
    printf("  Ports:         http://PORT-SANDBOXID.%s/ or http://%s:%d/sandboxes/SANDBOXID/ports/PORT/\n",
           domain, host, port);
    if (iso == SBX_ISOLATION_NAMESPACES)
        printf("  Sandboxes:     isolated (namespaces), kept in %s\n", state_dir);
    else
        printf("  Sandboxes:     NOT ISOLATED (--isolation none): code runs on this host as this user\n");
    if (auth) printf("  Clients read:  export KBRIDGE_TOKEN=%s\n", token);
    printf("\n");
    fflush(stdout);
}

int cmd_serve(int argc, char **argv)
{
    config_t cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.allowed_hosts = json_array();
    cfg.allowed_origins = json_array();
    json_t *env = json_object();
    const char *token_arg = NULL, *token_file = NULL, *transport = "tcp", *scheme = "hmac-sha256";
    const char *log_level = "info";
    bool no_autorestart = false, access_log = false;
    uint64_t port = 49999, keep_alive = 60000, keep_alive_max = 3600000;
    uint64_t max_message = 16u << 20, max_body = 16u << 20, max_outbound = 64u << 20;
    uint64_t max_retained = 4u << 20, max_buffered = 1024u << 20;
    uint64_t tunnel_idle = 3600000;
    uint64_t header_timeout = 10000, max_pending = 32, heartbeat_timeout = 30000, cull_idle = 0;
    bool cull_connected = false;
    //  Defaults sized from the machine: a Python kernel takes ~70 MiB and a few fds;
    //  each connection a socket, a channels connection three ZeroMQ sockets more.
    struct rlimit nofile = {1024, 1024};
    getrlimit(RLIMIT_NOFILE, &nofile);
    uint64_t fds = nofile.rlim_cur == RLIM_INFINITY ? 1u << 20 : (uint64_t) nofile.rlim_cur;
    struct sysinfo si;
    uint64_t mem = sysinfo(&si) == 0 ? (uint64_t) si.totalram * si.mem_unit : 4ull << 30;
    uint64_t max_kernels = mem / (96u << 20);
    if (max_kernels > fds / 32) max_kernels = fds / 32;
    if (max_kernels > 512) max_kernels = 512;
    if (max_kernels < 4) max_kernels = 4;
    uint64_t max_connections = fds / 4 > 16384 ? 16384 : fds / 4;
    if (max_connections < 64) max_connections = 64;
    uint64_t max_channels = 64;
    char kernels_def[32], conns_def[32];
    snprintf(kernels_def, sizeof kernels_def, "%llu here", (unsigned long long) max_kernels);
    snprintf(conns_def, sizeof conns_def, "%llu here", (unsigned long long) max_connections);
    const char *default_kernel = "python3";
    const char *ip = "127.0.0.1", *domain = NULL;
    //  Sandboxes
    const char *isolation = NULL, *state_dir = NULL, *node_id = "kb", *kernel_user = "user";
    bool isolate_default = false;
    uint64_t pool_kernels = 1, pool_sandboxes = 1;
    const char *pool_kernels_arg = "1";
    json_t *pool_kernelspecs = json_object();
    json_t *templates = json_object();
    uint64_t sandbox_memory = 1ull << 30, sandbox_pids = 1024, sandbox_max_timeout = 86400000;
    uint64_t sandbox_cpus = (uint64_t) uv_available_parallelism();
    uint64_t max_sandboxes = mem / (128u << 20);
    if (max_sandboxes > 1024) max_sandboxes = 1024;
    if (max_sandboxes < 4) max_sandboxes = 4;
    char sandboxes_def[32], cpus_def[32], state_def[64];
    snprintf(sandboxes_def, sizeof sandboxes_def, "%llu here", (unsigned long long) max_sandboxes);
    snprintf(cpus_def, sizeof cpus_def, "%llu here", (unsigned long long) sandbox_cpus);
    snprintf(state_def, sizeof state_def, "%s", geteuid() == 0 ? "/var/lib/kbridge" : "~/.local/state/kbridge");
    static const char *const isolations[] = {"namespaces", "none", NULL};
    static const char *const users[] = {"user", "root", NULL};
    static const char *const transports[] = {"tcp", "ipc", NULL};
    static const char *const schemes[] = {"hmac-sha256", "hmac-sha512", NULL};
    static const char *const levels[] = {"debug", "info", "warn", "error", NULL};
    const opt_t table[] = {
        {"ip", 0, OPT_STRING, "KBRIDGE_IP", "ADDR", "listen address; ::1 for the IPv6 loopback", "127.0.0.1", 0, 0, NULL, &ip},
        {"port", 'p', OPT_UINT, "KBRIDGE_PORT", "N", "listen port; 0 picks a free one", "49999", 0, 65535, NULL, &port},
        {"token", 0, OPT_STRING, "KBRIDGE_TOKEN", "T", "access token; \"\" disables authentication (visible in ps: "
                                                      "prefer the environment or --token-file)", "generated", 0, 0, NULL, &token_arg},
        {"token-file", 0, OPT_STRING, "KBRIDGE_TOKEN_FILE", "PATH", "read the token from the first line of a file", NULL, 0, 0, NULL, &token_file},
        {"allow-host", 0, OPT_LIST, NULL, "NAME", "accept this Host besides localhost and the listen address ('*': any)", NULL, 0, 0, NULL, &cfg.allowed_hosts},
        {"allow-origin", 0, OPT_LIST, NULL, "ORIGIN", "accept browser requests from this Origin ('*': any)", NULL, 0, 0, NULL, &cfg.allowed_origins},
        {"domain", 0, OPT_STRING, "KBRIDGE_DOMAIN", "NAME", "sandbox host names are PORT-ID.NAME", "localhost:PORT", 0, 0, NULL, &domain},
        {"default-kernel", 0, OPT_STRING, "KBRIDGE_DEFAULT_KERNEL", "NAME", "kernelspec used when none is named", "python3", 0, 0, NULL, &default_kernel},
        {"env", 0, OPT_KV, NULL, "K=V", "environment variable for every kernel", NULL, 0, 0, NULL, &env},
        {"kernel-transport", 0, OPT_CHOICE, "KBRIDGE_KERNEL_TRANSPORT", "T", "how kbridge reaches kernels: tcp or ipc", "tcp", 0, 0, transports, &transport},
        {"signature-scheme", 0, OPT_CHOICE, "KBRIDGE_SIGNATURE_SCHEME", "S", "hmac-sha256 or hmac-sha512", "hmac-sha256", 0, 0, schemes, &scheme},
        {"cull-idle-timeout", 0, OPT_SECONDS, "KBRIDGE_CULL_IDLE_TIMEOUT", "S", "shut down kernels idle (not busy) this long, in any sandbox, as Jupyter Server's cull_idle_timeout (0: never)", "0", 0, 31536000, NULL, &cull_idle},
        {"cull-connected", 0, OPT_FLAG, "KBRIDGE_CULL_CONNECTED", NULL, "cull idle kernels even with Jupyter channels connections open", NULL, 0, 0, NULL, &cull_connected},
        {"no-autorestart", 0, OPT_FLAG, "KBRIDGE_NO_AUTORESTART", NULL, "do not restart kernels that die", NULL, 0, 0, NULL, &no_autorestart},
        {"heartbeat-timeout", 0, OPT_SECONDS, "KBRIDGE_HEARTBEAT_TIMEOUT", "S", "seconds a kernel's heartbeat may stay silent before its runs end with KernelNotResponding", "30", 1, 86400, NULL, &heartbeat_timeout},
        {"keep-alive", 0, OPT_SECONDS, "KBRIDGE_KEEP_ALIVE", "S", "seconds a disconnected session lives", "60", 0, 86400, NULL, &keep_alive},
        {"tunnel-idle", 0, OPT_SECONDS, "KBRIDGE_TUNNEL_IDLE", "S", "seconds a proxied WebSocket (or other upgrade) to a sandbox's port may pass no bytes either way before it is closed (0: never)", "3600", 0, 86400u * 30, NULL, &tunnel_idle},
        {"keep-alive-max", 0, OPT_SECONDS, "KBRIDGE_KEEP_ALIVE_MAX", "S", "the most a client may ask for", "3600", 0, 86400 * 30, NULL, &keep_alive_max},
        {"max-kernels", 0, OPT_UINT, "KBRIDGE_MAX_KERNELS", "N", "kernels alive at once", kernels_def, 1, 100000, NULL, &max_kernels},
        {"max-connections", 0, OPT_UINT, "KBRIDGE_MAX_CONNECTIONS", "N", "client connections open at once", conns_def, 1, 1000000, NULL, &max_connections},
        {"max-channels-per-kernel", 0, OPT_UINT, "KBRIDGE_MAX_CHANNELS_PER_KERNEL", "N", "Jupyter channels connections on one kernel", "64", 1, 100000, NULL, &max_channels},
        {"max-pending-headers", 0, OPT_UINT, "KBRIDGE_MAX_PENDING_HEADERS", "N", "connections of one address still sending a request head (the oldest goes)", "32", 1, 100000, NULL, &max_pending},
        {"header-timeout", 0, OPT_SECONDS, "KBRIDGE_HEADER_TIMEOUT", "S", "seconds a request head may take to arrive", "10", 1, 3600, NULL, &header_timeout},
        {"max-message-bytes", 0, OPT_SIZE, "KBRIDGE_MAX_MESSAGE_BYTES", "N", "largest WebSocket message accepted", "16M", 1024, 1ull << 32, NULL, &max_message},
        {"max-body-bytes", 0, OPT_SIZE, "KBRIDGE_MAX_BODY_BYTES", "N", "largest buffered HTTP request body", "16M", 1024, 1ull << 32, NULL, &max_body},
        {"max-outbound-bytes", 0, OPT_SIZE, "KBRIDGE_MAX_OUTBOUND_BYTES", "N", "output queued for one slow client before it is disconnected", "64M", 65536, 1ull << 36, NULL, &max_outbound},
        {"max-buffered-bytes", 0, OPT_SIZE, "KBRIDGE_MAX_BUFFERED_BYTES", "N", "output queued for all clients before the slowest is dropped", "1G", 65536, 1ull << 40, NULL, &max_buffered},
        {"max-retained-output", 0, OPT_SIZE, "KBRIDGE_MAX_RETAINED_OUTPUT", "N", "output kept in one Execution object (the stream always carries everything)", "4M", 0, 1ull << 32, NULL, &max_retained},
        {"isolation", 0, OPT_CHOICE, "KBRIDGE_ISOLATION", "I", "sandboxes: namespaces (own filesystem, users, network, limits) or none (host processes)", "namespaces where supported", 0, 0, isolations, &isolation},
        {"isolate-default", 0, OPT_FLAG, "KBRIDGE_ISOLATE_DEFAULT", NULL, "run the default sandbox (Jupyter, E2B without a sandbox id) isolated too", NULL, 0, 0, NULL, &isolate_default},
        {"state-dir", 0, OPT_STRING, "KBRIDGE_STATE_DIR", "PATH", "where sandboxes persist (their files, settings and end times)", state_def, 0, 0, NULL, &state_dir},
        {"node-id", 0, OPT_STRING, "KBRIDGE_NODE_ID", "ID", "prefix of every sandbox id ([a-z0-9], at most 8)", "kb", 0, 0, NULL, &node_id},
        {"template", 0, OPT_KV, NULL, "NAME=DIR", "a sandbox template from a root-filesystem directory (e.g. made with debootstrap)", NULL, 0, 0, NULL, &templates},
        {"max-sandboxes", 0, OPT_UINT, "KBRIDGE_MAX_SANDBOXES", "N", "sandboxes alive at once (the default one excluded)", sandboxes_def, 1, 49150, NULL, &max_sandboxes},
        {"sandbox-memory", 0, OPT_SIZE, "KBRIDGE_SANDBOX_MEMORY", "N", "memory of a sandbox (default and most a client may ask for)", "1G", 16u << 20, 1ull << 44, NULL, &sandbox_memory},
        {"sandbox-cpus", 0, OPT_UINT, "KBRIDGE_SANDBOX_CPUS", "N", "CPUs of a sandbox (default and most a client may ask for)", cpus_def, 1, 4096, NULL, &sandbox_cpus},
        {"sandbox-pids", 0, OPT_UINT, "KBRIDGE_SANDBOX_PIDS", "N", "processes and threads in a sandbox", "1024", 16, 4194304, NULL, &sandbox_pids},
        {"sandbox-max-timeout", 0, OPT_SECONDS, "KBRIDGE_SANDBOX_MAX_TIMEOUT", "S", "the longest a sandbox may be asked to live", "86400", 1, 86400u * 365, NULL, &sandbox_max_timeout},
        {"sandbox-kernel-user", 0, OPT_CHOICE, "KBRIDGE_SANDBOX_KERNEL_USER", "U", "the user kernels run as in isolated sandboxes: user or root", "user", 0, 0, users, &kernel_user},
        {"pool-kernels", 0, OPT_STRING, "KBRIDGE_POOL_KERNELS", "N|NAME=N,...", "warm kernels kept started in the default sandbox, taken by the next kernel start: N of the default kernelspec, NAME=N of kernelspec NAME, comma-separated, N from 0 (none) to 64 (e.g. 2,ir=1)", "1", 0, 0, NULL, &pool_kernels_arg},
        {"pool-sandboxes", 0, OPT_UINT, "KBRIDGE_POOL_SANDBOXES", "N", "warm sandboxes kept running per template, each with its default kernel started, taken by the next sandbox create (0: none)", "1", 0, 64, NULL, &pool_sandboxes},
        {"access-log", 0, OPT_FLAG, "KBRIDGE_ACCESS_LOG", NULL, "log one line per request (method, path without the token, status, bytes, ms)", NULL, 0, 0, NULL, &access_log},
        {"log-level", 0, OPT_CHOICE, "KBRIDGE_LOG_LEVEL", "L", "debug, info, warn or error", "info", 0, 0, levels, &log_level},
    };
    size_t ntable = sizeof table / sizeof *table;
    int rc = 2;
    char why[512];
    char *token_copy = NULL;
    rundir_t *rundir = NULL;
    int prc = options_parse(table, ntable, argc, argv, 1, NULL, why, sizeof why);
    if (prc == 1) {
        options_help(table, ntable, "usage: kbridge serve [options]",
                     "The token is also accepted as ?token=, Authorization: token T or Bearer T,\n"
                     "X-Access-Token, E2B-Traffic-Access-Token and X-API-Key.", stdout);
        rc = 0;
        goto done;
    }
    if (prc != 0) {
        fprintf(stderr, "kbridge serve: %s\n", why);
        goto done;
    }
    klog_set_level((klog_level_t) klog_parse_level(log_level));
    hostsbx_agent_path();  //  reads $KBRIDGE_AGENT before the KBRIDGE_* variables go
    char *env_token = getenv("KBRIDGE_TOKEN");
    if (token_arg && token_arg != env_token && token_arg[0])
        klog_warn("--token is visible to every local user (ps); prefer $KBRIDGE_TOKEN or --token-file");
    if (token_arg && token_arg == env_token) {
        //  Copied, and wiped where it was: the environment block stays in our memory.
        token_copy = strdup(env_token);
        sodium_memzero(env_token, strlen(env_token));
        token_arg = token_copy;
    }
    if (token_file) {
        if (token_copy) sodium_memzero(token_copy, strlen(token_copy));
        free(token_copy);
        token_copy = s_read_token_file(token_file, why, sizeof why);
        if (!token_copy) {
            fprintf(stderr, "kbridge serve: %s\n", why);
            goto done;
        }
        token_arg = token_copy;
    }
    //  KBRIDGE_* variables are kbridge's own (its options, its token): none reaches a
    //  child. Names are copied first: unsetenv reshuffles environ.
    {
        extern char **environ;
        char names[64][96];
        size_t nnames = 0;
        for (char **e = environ; *e && nnames < 64; e++)
            if (strncmp(*e, "KBRIDGE_", 8) == 0) {
                size_t nl = strcspn(*e, "=");
                if (nl < sizeof names[0]) snprintf(names[nnames++], sizeof names[0], "%.*s", (int) nl, *e);
            }
        for (size_t i = 0; i < nnames; i++) unsetenv(names[i]);
    }
    //  Same-uid processes (kernels in the default sandbox) must not read the token out of
    //  our memory through /proc/<pid>/mem or a core dump.
    prctl(PR_SET_DUMPABLE, 0);
    if (keep_alive > keep_alive_max) keep_alive = keep_alive_max;

    char generated[49];
    if (!token_arg) {
        kb_random_hex(generated, 24);
        token_arg = generated;
    }
    cfg.ip = ip;
    cfg.port = (int) port;
    cfg.token = token_arg;
    cfg.domain = domain;
    cfg.access_log = access_log;
    cfg.max_message_bytes = max_message;
    cfg.max_body_bytes = max_body;
    cfg.max_outbound_bytes = max_outbound;
    cfg.max_buffered_bytes = max_buffered;
    cfg.max_retained_output = max_retained;
    cfg.max_connections = max_connections;
    cfg.max_pending_per_peer = max_pending;
    cfg.max_channels_per_kernel = max_channels;
    cfg.max_kernels = max_kernels;
    cfg.header_timeout_ms = header_timeout;
    cfg.idle_timeout_ms = 75000;
    cfg.tunnel_idle_ms = tunnel_idle;
    cfg.keep_alive_ms = keep_alive;
    cfg.keep_alive_max_ms = keep_alive_max;
    if (!*token_arg)
        klog_warn("AUTHENTICATION IS DISABLED (empty token): anyone who can reach %s:%d can run "
                  "code as this user", cfg.ip, cfg.port);
    kspec_t *spec = kspec_find(default_kernel, NULL);
    if (!spec) {
        char installed[512];
        s_installed(installed, sizeof installed);
        fprintf(stderr, "kbridge serve: the default kernel '%s' is not installed (installed: %s; "
                        "pass --default-kernel)\n", default_kernel, installed);
        rc = 1;
        goto done;
    }
    kspec_destroy(&spec);
    cfg.default_kernel = default_kernel;
    if (!pool_kernelspecs ||
        !s_parse_pool_kernels(pool_kernels_arg, default_kernel, &pool_kernels, pool_kernelspecs, why, sizeof why)) {
        fprintf(stderr, "kbridge serve: %s\n", pool_kernelspecs ? why : "out of memory");
        goto done;
    }

    rundir = rundir_new(NULL);
    if (!rundir) {
        rc = 1;
        goto done;
    }
    //  Sandboxes: isolated wherever this host can, and only not when asked.
    if (strspn(node_id, "abcdefghijklmnopqrstuvwxyz0123456789") != strlen(node_id) || !*node_id ||
        strlen(node_id) > 8) {
        fprintf(stderr, "kbridge serve: --node-id '%s': 1 to 8 characters of [a-z0-9]\n", node_id);
        goto done;
    }
    if (!hostsbx_agent_path()) {
        fprintf(stderr, "kbridge serve: kbridge-agent not found (next to kbridge, in "
                        "../lib/kbridge, or $KBRIDGE_AGENT): reinstall kbridge\n");
        rc = 1;
        goto done;
    }
    sbx_isolation_t iso = SBX_ISOLATION_NAMESPACES;
    if (isolation && strcmp(isolation, "none") == 0) {
        iso = SBX_ISOLATION_NONE;
        if (isolate_default) {
            fprintf(stderr, "kbridge serve: --isolate-default needs --isolation namespaces\n");
            goto done;
        }
    } else if (sbx_probe(hostsbx_agent_path(), why, sizeof why) != 0) {
        fprintf(stderr, "kbridge serve: sandboxes cannot be isolated on this host: %s.\n"
                        "Fix that, or pass --isolation none (code then runs on this host as "
                        "this user, unisolated).\n", why);
        rc = 1;
        goto done;
    }
    char state_buf[4096];
    if (!state_dir) {
        const char *xdg = getenv("XDG_STATE_HOME"), *home = getenv("HOME");
        if (geteuid() == 0)
            snprintf(state_buf, sizeof state_buf, "/var/lib/kbridge");
        else if (xdg && *xdg)
            snprintf(state_buf, sizeof state_buf, "%s/kbridge", xdg);
        else
            snprintf(state_buf, sizeof state_buf, "%s/.local/state/kbridge", home && *home ? home : "/tmp");
        state_dir = state_buf;
    } else if (state_dir[0] != '/') {
        char cwd[2048];
        snprintf(state_buf, sizeof state_buf, "%s/%s", getcwd(cwd, sizeof cwd) ? cwd : ".", state_dir);
        state_dir = state_buf;
    }
    int state_lock = sandboxes_lock_state_dir(state_dir, why, sizeof why);
    if (state_lock < 0) {
        fprintf(stderr, "kbridge serve: %s\n", why);
        rc = 1;
        goto done;
    }
    //  Ours only: another kbridge (another state directory) keeps its sandboxes.
    char cgroup_parent[64];
    sandboxes_cgroup_parent(state_dir, cgroup_parent, sizeof cgroup_parent);
    if (geteuid() == 0) sbx_reap_stale(cgroup_parent);

    serve_t st;
    memset(&st, 0, sizeof st);
    st.loop = uv_default_loop();
    if (!isolate_default) {
        st.host = hostsbx_start(st.loop, rundir_path(rundir), why, sizeof why);
        if (!st.host) {
            fprintf(stderr, "kbridge serve: %s\n", why);
            rc = 1;
            goto done;
        }
    }
    registry_config_t rcfg = {env, transport, default_kernel, !no_autorestart, scheme,
                              (size_t) max_kernels, (int) heartbeat_timeout, cull_idle, cull_connected};
    st.registry = registry_new(st.loop, &rcfg);
    //  What no sandbox may see, besides the state directory (the table adds it).
    //  Also the well-known places of any other kbridge on this host (its sandboxes, token).
    //  (A sandbox's /run and /tmp are its own already.)
    const char *hidden[] = {"/var/lib/kbridge", "/etc/kbridge", rundir_path(rundir), token_file, NULL};
    size_t ntemplates = json_object_size(templates);
    sandboxes_template_t *tlist = calloc(ntemplates + 1, sizeof *tlist);
    {
        size_t i = 0;
        const char *tname;
        json_t *tdir;
        json_object_foreach(templates, tname, tdir)
        {
            tlist[i].name = tname;
            tlist[i].dir = json_string_value(tdir);
            i++;
        }
    }
    sandboxes_config_t scfg = {
        .state_dir = state_dir,
        .agent_path = hostsbx_agent_path(),
        .node_id = node_id,
        .isolation = iso,
        .hidden = hidden,
        .templates = tlist,
        .ntemplates = ntemplates,
        .memory_bytes = sandbox_memory,
        .cpu_millis = (uint32_t) (sandbox_cpus * 1000u),
        .pids = (uint32_t) sandbox_pids,
        .max_timeout_ms = sandbox_max_timeout,
        .max_sandboxes = (size_t) max_sandboxes,
        .kernel_user = kernel_user,
        .host = st.host,
        .isolate_default = isolate_default,
        .cgroup_parent = geteuid() == 0 ? cgroup_parent : NULL,
        .pool_kernels = (size_t) pool_kernels,
        .pool_sandboxes = (size_t) pool_sandboxes,
        .pool_kernelspecs = pool_kernelspecs,
    };
    snprintf(why, sizeof why, "out of memory");
    st.sandboxes = st.registry && tlist ? sandboxes_new(st.loop, &scfg, st.registry, why, sizeof why) : NULL;
    free(tlist);
    api_ctx_t ctx = {st.loop, st.registry, st.sandboxes, &cfg};
    st.server = st.sandboxes ? server_new(&ctx, why, sizeof why) : NULL;
    if (!st.server) {
        fprintf(stderr, "kbridge serve: %s\n", why);
        sandboxes_destroy(&st.sandboxes);
        registry_destroy(&st.registry);
        sbx_destroy(&st.host);
        uv_run(st.loop, UV_RUN_DEFAULT);
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

    s_banner(&cfg, server_port(st.server), token_arg, default_kernel, iso, state_dir);
    uv_run(st.loop, UV_RUN_DEFAULT);
    server_destroy(&st.server);
    uv_run(st.loop, UV_RUN_DEFAULT);
    if (uv_loop_close(st.loop) != 0) klog_debug("loop closed with handles still open");
    klog_info("stopped");
    rc = 0;
done:
    rundir_destroy(&rundir);
    if (token_copy) sodium_memzero(token_copy, strlen(token_copy));
    free(token_copy);
    json_decref(cfg.allowed_hosts);
    json_decref(cfg.allowed_origins);
    json_decref(env);
    json_decref(templates);
    json_decref(pool_kernelspecs);
    return rc;
}
