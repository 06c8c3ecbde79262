/*  portaddr - the host and path forms of a sandbox port. */
#include "portaddr.h"
#include "../http/hutil.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

static bool s_id_ok(const char *id, size_t n)
{
    if (n == 0 || n > PORTADDR_ID_MAX) return false;
    for (size_t i = 0; i < n; i++)
        if (!((id[i] >= 'a' && id[i] <= 'z') || (id[i] >= '0' && id[i] <= '9'))) return false;
    return true;
}

//  A port in [s, s + n): decimal, 1-65535, no leading zero. -1 otherwise.
static int s_port(const char *s, size_t n)
{
    if (n == 0 || n > 5 || s[0] == '0') return -1;
    int port = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return -1;
        port = port * 10 + (s[i] - '0');
    }
    return port <= 65535 ? port : -1;
}

static const char *s_domain(const config_t *config)
{
    return config && config->domain && *config->domain ? config->domain : "localhost";
}

bool portaddr_parse_host(const config_t *config, const char *host, int *port, char *id, size_t size)
{
    char name[256], domain[256];
    int hport, dport;
    if (!host || hutil_host(host, name, sizeof name, &hport) != 0) return false;
    //  The first label is "<port>-<id>"; what follows the first dot is the domain.
    const char *dot = strchr(name, '.');
    const char *dash = dot ? memchr(name, '-', (size_t) (dot - name)) : NULL;
    if (!dash) return false;
    const char *rest = dot + 1;
    bool ours = strcmp(rest, "localhost") == 0 ||
                (hutil_host(s_domain(config), domain, sizeof domain, &dport) == 0 &&
                 strcmp(rest, domain) == 0);
    if (!ours) return false;
    int p = s_port(name, (size_t) (dash - name));
    size_t idlen = (size_t) (dot - dash - 1);
    if (p < 0 || !s_id_ok(dash + 1, idlen) || idlen + 1 > size) return false;
    memcpy(id, dash + 1, idlen);
    id[idlen] = '\0';
    *port = p;
    return true;
}

bool portaddr_parse_path(const char *path, int *port, char *id, size_t size, const char **rest)
{
    static const char prefix[] = "/sandboxes/";
    if (!path || strncmp(path, prefix, sizeof prefix - 1) != 0) return false;
    const char *s = path + sizeof prefix - 1;
    const char *slash = strchr(s, '/');
    if (!slash || strncmp(slash, "/ports/", 7) != 0) return false;
    size_t idlen = (size_t) (slash - s);
    if (!s_id_ok(s, idlen) || idlen + 1 > size) return false;
    const char *ps = slash + 7;
    size_t plen = strcspn(ps, "/");
    int p = s_port(ps, plen);
    if (p < 0) return false;
    memcpy(id, s, idlen);
    id[idlen] = '\0';
    *port = p;
    *rest = ps + plen;
    return true;
}
