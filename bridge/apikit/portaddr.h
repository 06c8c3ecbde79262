/*  portaddr - the names the port proxy recognizes in requests (sbxhost.h makes them for
    clients).

    Host form (as E2B's edge proxy): "<port>-<sandbox id>.<domain>", the domain
    being --domain's host name, or localhost (browsers resolve every *.localhost to the
    loopback). Path form, for clients that cannot resolve
    such names: "/sandboxes/<sandbox id>/ports/<port>" followed by the path the server in
    the sandbox sees. Ports are 1-65535 written without leading zeros; ids [a-z0-9]{1,32}
    (so the '-' of the host form is unambiguous).
*/
#ifndef PORTADDR_H
#define PORTADDR_H

#include "../config.h"

#include <stdbool.h>
#include <stddef.h>

#define PORTADDR_ID_MAX 32

//  Whether a Host header value names a sandbox port: "<port>-<id>.<name>[:p]" where name
//  is the domain's host name or "localhost" (any case; the port after ':' is not
//  compared, so tunnels to another local port still work). Fills *port and id (at least
//  PORTADDR_ID_MAX + 1 bytes).
bool portaddr_parse_host(const config_t *config, const char *host, int *port, char *id, size_t size);
//  Whether a raw (still percent-encoded) path is of the path form. Fills *port, id and
//  *rest: what follows the prefix, which is "" or starts with '/'.
bool portaddr_parse_path(const char *path, int *port, char *id, size_t size, const char **rest);

#endif
