/*  zmq_floor - the physical floor for bench/run_all.py: a bare C Jupyter client on libzmq
    and OpenSSL, with no JSON library and nothing else in the way.

    It does what a client must (signs requests, verifies every received signature before
    looking at the message, matches replies to its request) and nothing more, so its
    latency and CPU are what talking to the kernel costs at the least. Headers are built
    with snprintf from a template; the few fields it reads are found by plain scanning.

    Usage (driven by bench/worker.py, target zmq-c; not installed):
      zmq_floor connect IP SHELL_PORT IOPUB_PORT KEY
          then commands on stdin, one JSON line of results on stdout per command:
          lat N WARMUP   N timed `1+1` (after WARMUP untimed): idle_us per run and the
                         client's own CPU (user + sys, all threads) in microseconds
          exec HEXCODE   run one cell (code hex-encoded): seconds to idle, first output,
                         stream/display payload characters, messages, wire bytes
          quit
      zmq_floor kstart N PYTHON
          N times: write a connection file, spawn PYTHON -m ipykernel_launcher -f FILE,
          send kernel_info_request every 10 ms until the reply AND an iopub message have
          arrived (kbridge's readiness rule), record spawn -> ready, kill the kernel.
*/
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <openssl/rand.h>
#include <zmq.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define DELIM "<IDS|MSG>"
#define MAX_FRAMES 64

static EVP_MAC_CTX *s_mac;
static void *s_ctx, *s_shell, *s_iopub;
static char s_session[40];
static unsigned long s_counter;

static double s_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double) t.tv_sec + (double) t.tv_nsec * 1e-9;
}

static double s_cpu_us(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double) (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e6 +
           (double) (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

static void s_die(const char *what)
{
    fprintf(stderr, "zmq_floor: %s\n", what);
    exit(1);
}

static void s_key(const char *key)
{
    EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    s_mac = mac ? EVP_MAC_CTX_new(mac) : NULL;
    EVP_MAC_free(mac);
    OSSL_PARAM params[2] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, "SHA256", 0),
                            OSSL_PARAM_construct_end()};
    if (!s_mac || !EVP_MAC_init(s_mac, (const unsigned char *) key, strlen(key), params))
        s_die("HMAC setup failed");
}

static void s_sign(const void *const parts[4], const size_t lens[4], char hex[65])
{
    static const char digits[] = "0123456789abcdef";
    unsigned char mac[32];
    size_t n = 0;
    EVP_MAC_init(s_mac, NULL, 0, NULL);
    for (int i = 0; i < 4; i++) EVP_MAC_update(s_mac, parts[i], lens[i]);
    EVP_MAC_final(s_mac, mac, &n, sizeof mac);
    for (int i = 0; i < 32; i++) {
        hex[2 * i] = digits[mac[i] >> 4];
        hex[2 * i + 1] = digits[mac[i] & 15];
    }
    hex[64] = '\0';
}

static void s_date(char out[40])
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    struct tm tm;
    gmtime_r(&t.tv_sec, &tm);
    size_t n = strftime(out, 40, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, 40 - n, ".%06ldZ", t.tv_nsec / 1000);
}

//  Send msg_type with content on the shell socket; the msg_id goes to id_out.
static void s_send(const char *msg_type, const char *content, char id_out[64])
{
    char header[512], date[40];
    s_date(date);
    snprintf(id_out, 64, "%s_%lu", s_session, ++s_counter);
    int hl = snprintf(header, sizeof header,
                      "{\"msg_id\":\"%s\",\"username\":\"floor\",\"session\":\"%s\",\"date\":\"%s\","
                      "\"msg_type\":\"%s\",\"version\":\"5.3\"}",
                      id_out, s_session, date, msg_type);
    const void *parts[4] = {header, "{}", "{}", content};
    size_t lens[4] = {(size_t) hl, 2, 2, strlen(content)};
    char sig[65];
    s_sign(parts, lens, sig);
    zmq_send(s_shell, DELIM, 9, ZMQ_SNDMORE);
    zmq_send(s_shell, sig, 64, ZMQ_SNDMORE);
    for (int i = 0; i < 4; i++) zmq_send(s_shell, parts[i], lens[i], i < 3 ? ZMQ_SNDMORE : 0);
}

typedef struct {
    zmq_msg_t f[MAX_FRAMES];
    int n;
    size_t wire;
    const char *part[4];  //  header, parent, metadata, content (not NUL-terminated)
    size_t len[4];
} msg_t;

static void s_msg_close(msg_t *m)
{
    for (int i = 0; i < m->n; i++) zmq_msg_close(&m->f[i]);
    m->n = 0;
}

//  Receive one multipart message (nonblocking). 1 = got a verified message, 0 = none,
//  -1 = dropped (bad framing or signature).
static int s_recv(void *sock, msg_t *m)
{
    m->n = 0;
    m->wire = 0;
    int more = 1;
    while (more) {
        if (m->n == MAX_FRAMES) s_die("too many frames");
        zmq_msg_init(&m->f[m->n]);
        if (zmq_msg_recv(&m->f[m->n], sock, m->n ? 0 : ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&m->f[m->n]);
            return 0;
        }
        m->wire += zmq_msg_size(&m->f[m->n]);
        more = zmq_msg_more(&m->f[m->n]);
        m->n++;
    }
    int d = 0;
    while (d < m->n && !(zmq_msg_size(&m->f[d]) == 9 && memcmp(zmq_msg_data(&m->f[d]), DELIM, 9) == 0))
        d++;
    if (d + 5 >= m->n) {  //  delimiter, signature and four parts
        s_msg_close(m);
        return -1;
    }
    const void *parts[4];
    size_t lens[4];
    for (int i = 0; i < 4; i++) {
        parts[i] = m->part[i] = zmq_msg_data(&m->f[d + 2 + i]);
        lens[i] = m->len[i] = zmq_msg_size(&m->f[d + 2 + i]);
    }
    char sig[65];
    s_sign(parts, lens, sig);
    if (zmq_msg_size(&m->f[d + 1]) != 64 || CRYPTO_memcmp(sig, zmq_msg_data(&m->f[d + 1]), 64) != 0) {
        s_msg_close(m);
        return -1;
    }
    return 1;
}

//  The string value of "key" in JSON text p (first occurrence, no escapes in the value):
//  returns a pointer to it and its length, or NULL.
static const char *s_field(const char *p, size_t len, const char *key, size_t *vlen)
{
    size_t kl = strlen(key);
    const char *end = p + len;
    for (const char *q = p; q + kl + 2 < end; q++) {
        q = memchr(q, '"', (size_t) (end - q));
        if (!q || q + kl + 2 >= end) return NULL;
        if (memcmp(q + 1, key, kl) != 0 || q[kl + 1] != '"') continue;
        const char *v = q + kl + 2;
        while (v < end && (*v == ' ' || *v == ':')) v++;
        if (v >= end || *v != '"') return NULL;
        const char *ve = memchr(v + 1, '"', (size_t) (end - v - 1));
        if (!ve) return NULL;
        *vlen = (size_t) (ve - v - 1);
        return v + 1;
    }
    return NULL;
}

static int s_is(const char *v, size_t vl, const char *s)
{
    return v && vl == strlen(s) && memcmp(v, s, vl) == 0;
}

//  Characters of the JSON string token starting at p (the opening quote): a \uXXXX escape
//  is one character, as Python's len() counts the decoded str (payloads here are ASCII).
//  *endp is set past the closing quote.
static size_t s_strlen(const char *p, const char *end, const char **endp)
{
    size_t n = 0;
    p++;
    while (p < end && *p != '"') {
        if (*p == '\\') p += p + 1 < end && p[1] == 'u' ? 6 : 2;
        else p++;
        n++;
    }
    *endp = p < end ? p + 1 : end;
    return n;
}

//  Payload of an output message: stream text, or the sum of the data's MIME strings.
static size_t s_payload(const char *type, size_t tl, const char *c, size_t cl)
{
    const char *end = c + cl, *q;
    if (s_is(type, tl, "stream")) {
        for (q = c; q + 6 < end && memcmp(q, "\"text\"", 6) != 0; q++) {}
        if (q + 6 >= end) return 0;
        q += 6;
        while (q < end && *q != '"') q++;
        return q < end ? s_strlen(q, end, &q) : 0;
    }
    if (!s_is(type, tl, "display_data") && !s_is(type, tl, "update_display_data") &&
        !s_is(type, tl, "execute_result"))
        return 0;
    for (q = c; q + 7 < end && memcmp(q, "\"data\"", 6) != 0; q++) {}
    if (q + 7 >= end) return 0;
    q += 6;
    while (q < end && *q != '{') q++;
    size_t total = 0;
    //  {"mime": "string", ...}: every other string token is a value.
    for (int is_value = 0; q < end && *q != '}';) {
        if (*q == '"') {
            size_t n = s_strlen(q, end, &q);
            if (is_value) total += n;
            is_value = !is_value;
        } else {
            q++;
        }
    }
    return total;
}

typedef struct {
    double idle_s, reply_s, first_s;
    size_t payload, wire, msgs, stream_msgs, displays;
    int ok;
    char main_text[64];  //  text/plain of the execute_result (the PNG cell's setup)
} run_t;

static void s_execute(const char *code_json, run_t *r)
{
    char content[1 << 16], id[64];
    int cl = snprintf(content, sizeof content,
                      "{\"code\":%s,\"silent\":false,\"store_history\":true,\"user_expressions\":{},"
                      "\"allow_stdin\":false,\"stop_on_error\":true}", code_json);
    if (cl >= (int) sizeof content) s_die("code too long");
    memset(r, 0, sizeof *r);
    double t0 = s_now();
    s_send("execute_request", content, id);
    size_t idl = strlen(id);
    zmq_pollitem_t items[2] = {{s_shell, 0, ZMQ_POLLIN, 0}, {s_iopub, 0, ZMQ_POLLIN, 0}};
    int got_idle = 0, got_reply = 0;
    msg_t m;
    while (!got_idle || !got_reply) {
        if (zmq_poll(items, 2, 300000) <= 0) s_die("timeout");
        for (int s = 0; s < 2; s++) {
            while (s_recv(items[s].socket, &m) != 0) {
                if (!m.n) continue;
                size_t pl = 0, tl = 0;
                const char *pid = s_field(m.part[1], m.len[1], "msg_id", &pl);
                if (!(pid && pl == idl && memcmp(pid, id, idl) == 0)) {
                    s_msg_close(&m);
                    continue;
                }
                const char *type = s_field(m.part[0], m.len[0], "msg_type", &tl);
                double t = s_now() - t0;
                if (s == 0) {
                    if (s_is(type, tl, "execute_reply")) {
                        got_reply = 1;
                        r->reply_s = t;
                        size_t sl;
                        const char *st = s_field(m.part[3], m.len[3], "status", &sl);
                        r->ok = s_is(st, sl, "ok");
                    }
                } else {
                    r->msgs++;
                    r->wire += m.wire;
                    if (s_is(type, tl, "status")) {
                        size_t sl;
                        const char *st = s_field(m.part[3], m.len[3], "execution_state", &sl);
                        if (s_is(st, sl, "idle")) {
                            got_idle = 1;
                            r->idle_s = t;
                        }
                    } else {
                        if (s_is(type, tl, "stream")) r->stream_msgs++;
                        if (s_is(type, tl, "display_data")) r->displays++;
                        if (s_is(type, tl, "execute_result")) {
                            size_t vl;
                            const char *v = s_field(m.part[3], m.len[3], "text/plain", &vl);
                            if (v && vl < sizeof r->main_text) {
                                memcpy(r->main_text, v, vl);
                                r->main_text[vl] = '\0';
                            }
                        }
                        size_t p = s_payload(type, tl, m.part[3], m.len[3]);
                        if (p && !r->first_s) r->first_s = t;
                        r->payload += p;
                    }
                }
                s_msg_close(&m);
            }
        }
    }
}

static void *s_socket(int type, const char *ip, int port)
{
    void *sock = zmq_socket(s_ctx, type);
    int zero = 0, ivl = 10;
    zmq_setsockopt(sock, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(sock, ZMQ_RECONNECT_IVL, &ivl, sizeof ivl);
    if (type == ZMQ_SUB) zmq_setsockopt(sock, ZMQ_SUBSCRIBE, "", 0);
    if (type == ZMQ_DEALER) zmq_setsockopt(sock, ZMQ_ROUTING_ID, s_session, strlen(s_session));
    char ep[96];
    snprintf(ep, sizeof ep, "tcp://%s:%d", ip, port);
    if (zmq_connect(sock, ep) != 0) s_die("connect failed");
    return sock;
}

static void s_new_session(void)
{
    unsigned char b[16];
    RAND_bytes(b, sizeof b);
    for (int i = 0; i < 16; i++) sprintf(s_session + 2 * i, "%02x", b[i]);
}

//  kernel_info_request every poll_ms until the reply and some iopub message have come.
static int s_wait_ready(double timeout_s, int poll_ms)
{
    double end = s_now() + timeout_s, next = 0;
    int got_reply = 0, got_iopub = 0;
    char id[64];
    zmq_pollitem_t items[2] = {{s_shell, 0, ZMQ_POLLIN, 0}, {s_iopub, 0, ZMQ_POLLIN, 0}};
    msg_t m;
    while (!got_reply || !got_iopub) {
        double now = s_now();
        if (now > end) return -1;
        if (now >= next) {
            s_send("kernel_info_request", "{}", id);
            next = now + poll_ms / 1000.0;
        }
        int wait = (int) ((next - now) * 1000) + 1;
        zmq_poll(items, 2, wait);
        for (int s = 0; s < 2; s++)
            while (s_recv(items[s].socket, &m) != 0) {
                if (!m.n) continue;
                if (s == 1) got_iopub = 1;
                else {
                    size_t tl;
                    const char *type = s_field(m.part[0], m.len[0], "msg_type", &tl);
                    if (s_is(type, tl, "kernel_info_reply")) got_reply = 1;
                }
                s_msg_close(&m);
            }
    }
    return 0;
}

static void s_drain(int quiet_ms)
{
    zmq_pollitem_t items[2] = {{s_shell, 0, ZMQ_POLLIN, 0}, {s_iopub, 0, ZMQ_POLLIN, 0}};
    msg_t m;
    while (zmq_poll(items, 2, quiet_ms) > 0)
        for (int s = 0; s < 2; s++)
            while (s_recv(items[s].socket, &m) != 0)
                if (m.n) s_msg_close(&m);
}

static int s_hexval(int c)
{
    return c <= '9' ? c - '0' : (c | 32) - 'a' + 10;
}

//  The JSON string token for hex-encoded code (escapes quotes, backslashes, controls).
static char *s_code_json(const char *hex)
{
    size_t n = strlen(hex) / 2;
    char *out = malloc(6 * n + 3), *o = out;
    *o++ = '"';
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char) (s_hexval(hex[2 * i]) * 16 + s_hexval(hex[2 * i + 1]));
        if (c == '"' || c == '\\') {
            *o++ = '\\';
            *o++ = (char) c;
        } else if (c == '\n') {
            *o++ = '\\';
            *o++ = 'n';
        } else if (c < 0x20) {
            o += sprintf(o, "\\u%04x", c);
        } else {
            *o++ = (char) c;
        }
    }
    *o++ = '"';
    *o = '\0';
    return out;
}

static int s_connect_main(int argc, char **argv)
{
    if (argc < 6) s_die("usage: zmq_floor connect IP SHELL_PORT IOPUB_PORT KEY");
    s_key(argv[5]);
    s_new_session();
    s_ctx = zmq_ctx_new();
    s_shell = s_socket(ZMQ_DEALER, argv[2], atoi(argv[3]));
    s_iopub = s_socket(ZMQ_SUB, argv[2], atoi(argv[4]));
    if (s_wait_ready(60, 200)) s_die("kernel not ready");
    s_drain(100);
    printf("{\"ready\":true}\n");
    fflush(stdout);
    char line[1 << 17];
    while (fgets(line, sizeof line, stdin)) {
        line[strcspn(line, "\n")] = '\0';
        if (strncmp(line, "lat ", 4) == 0) {
            int n = 0, warm = 0;
            sscanf(line + 4, "%d %d", &n, &warm);
            run_t r;
            for (int i = 0; i < warm; i++) s_execute("\"1+1\"", &r);
            double *us = calloc((size_t) n + 1, sizeof *us);
            int bad = 0;
            double c0 = s_cpu_us(), w0 = s_now();
            for (int i = 0; i < n; i++) {
                s_execute("\"1+1\"", &r);
                us[i] = r.idle_s * 1e6;
                bad += !r.ok;
            }
            double cpu = s_cpu_us() - c0, wall = s_now() - w0;
            printf("{\"idle_us\":[");
            for (int i = 0; i < n; i++) printf("%s%.1f", i ? "," : "", us[i]);
            printf("],\"client_cpu_us\":%.0f,\"wall_s\":%.4f,\"failed\":%d}\n", cpu, wall, bad);
            free(us);
        } else if (strncmp(line, "exec ", 5) == 0) {
            char *code = s_code_json(line + 5);
            run_t r;
            double c0 = s_cpu_us();
            s_execute(code, &r);
            double cpu = s_cpu_us() - c0;
            free(code);
            for (char *c = r.main_text; *c; c++)
                if (*c == '"' || *c == '\\') *c = ' ';  //  it goes into a JSON string below
            printf("{\"idle_s\":%.6f,\"reply_s\":%.6f,\"first_s\":%.6f,\"payload\":%zu,\"wire\":%zu,"
                   "\"msgs\":%zu,\"stream_msgs\":%zu,\"displays\":%zu,\"ok\":%s,"
                   "\"main_text\":\"%s\",\"client_cpu_us\":%.0f}\n",
                   r.idle_s, r.reply_s, r.first_s, r.payload, r.wire, r.msgs, r.stream_msgs,
                   r.displays, r.ok ? "true" : "false", r.main_text, cpu);
        } else if (strcmp(line, "quit") == 0) {
            break;
        } else {
            printf("{\"error\":\"unknown command\"}\n");
        }
        fflush(stdout);
    }
    zmq_close(s_shell);
    zmq_close(s_iopub);
    zmq_ctx_term(s_ctx);
    return 0;
}

static int s_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    if (fd < 0 || bind(fd, (struct sockaddr *) &a, sizeof a) || getsockname(fd, (struct sockaddr *) &a, &al))
        s_die("no free port");
    close(fd);
    return ntohs(a.sin_port);
}

static int s_kstart_main(int argc, char **argv)
{
    if (argc < 4) s_die("usage: zmq_floor kstart N PYTHON");
    int n = atoi(argv[2]);
    const char *python = argv[3];
    char dir[] = "/tmp/zmq_floor-XXXXXX";
    if (!mkdtemp(dir)) s_die("mkdtemp");
    printf("{\"ready_ms\":[");
    for (int i = 0; i < n; i++) {
        int ports[5];
        for (int p = 0; p < 5; p++) ports[p] = s_free_port();
        unsigned char kb[16];
        char key[33], path[64];
        RAND_bytes(kb, sizeof kb);
        for (int k = 0; k < 16; k++) sprintf(key + 2 * k, "%02x", kb[k]);
        snprintf(path, sizeof path, "%s/kernel-%d.json", dir, i);
        FILE *f = fopen(path, "w");
        fprintf(f, "{\"shell_port\":%d,\"iopub_port\":%d,\"stdin_port\":%d,\"control_port\":%d,"
                   "\"hb_port\":%d,\"ip\":\"127.0.0.1\",\"key\":\"%s\",\"transport\":\"tcp\","
                   "\"signature_scheme\":\"hmac-sha256\",\"kernel_name\":\"\"}",
                ports[0], ports[1], ports[2], ports[3], ports[4], key);
        fclose(f);
        if (s_mac) EVP_MAC_CTX_free(s_mac);
        s_key(key);
        s_new_session();
        s_ctx = zmq_ctx_new();
        fflush(stdout);  //  or the child's exit would write our buffer again
        double t0 = s_now();
        pid_t pid = fork();
        if (pid == 0) {
            int devnull = open("/dev/null", O_WRONLY);
            dup2(devnull, 1);
            dup2(devnull, 2);
            execl(python, python, "-m", "ipykernel_launcher", "-f", path, (char *) NULL);
            _exit(127);
        }
        s_shell = s_socket(ZMQ_DEALER, "127.0.0.1", ports[0]);
        s_iopub = s_socket(ZMQ_SUB, "127.0.0.1", ports[1]);
        int rc = s_wait_ready(60, 10);
        double ms = (s_now() - t0) * 1e3;
        printf("%s%.1f", i ? "," : "", rc ? -1.0 : ms);
        fflush(stdout);
        zmq_close(s_shell);
        zmq_close(s_iopub);
        zmq_ctx_term(s_ctx);
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        unlink(path);
    }
    rmdir(dir);
    printf("]}\n");
    return 0;
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    if (argc >= 2 && strcmp(argv[1], "connect") == 0) return s_connect_main(argc, argv);
    if (argc >= 2 && strcmp(argv[1], "kstart") == 0) return s_kstart_main(argc, argv);
    s_die("usage: zmq_floor connect IP SHELL_PORT IOPUB_PORT KEY | kstart N PYTHON");
    return 1;
}
