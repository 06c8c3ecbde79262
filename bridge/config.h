/*  config - the service's settings, as `kbridge serve` parsed them (bridge/cli/). Every
    module reads what it needs from here; nothing writes it after start-up.
*/
#ifndef CONFIG_H
#define CONFIG_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    //  listening
    const char *ip;              //  listen address (default 127.0.0.1)
    int port;                    //  0 picks a free port
    const char *token;           //  "" disables auth
    json_t *allowed_hosts;       //  extra Host names (array of strings; "*" any)
    json_t *allowed_origins;     //  extra Origins ("*" any)
    const char *domain;          //  sandbox host names are <port>-<id>.<domain>
    bool access_log;             //  one line per request
    //  limits
    size_t max_message_bytes;    //  largest WebSocket message accepted
    size_t max_body_bytes;       //  largest buffered HTTP request body
    size_t max_outbound_bytes;   //  bytes queued to one slow client before it is dropped
    size_t max_buffered_bytes;   //  bytes queued to all clients before the slowest is dropped
    size_t max_retained_output;  //  bytes of output kept in one Execution object
    size_t max_connections;      //  open client connections
    size_t max_pending_per_peer; //  connections of one address still sending their head
    size_t max_channels_per_kernel;  //  Jupyter channels connections on one kernel
    size_t max_kernels;          //  kernels alive at once
    uint64_t header_timeout_ms;  //  a request head must be complete within this
    uint64_t idle_timeout_ms;    //  idle keep-alive connections, stalled bodies
    uint64_t tunnel_idle_ms;     //  proxied upgrades (WebSocket) with no bytes either way; 0: none
    //  native sessions
    uint64_t keep_alive_ms;      //  how long a disconnected session lives by default
    uint64_t keep_alive_max_ms;  //  the most a client may ask for
    //  kernels
    const char *default_kernel;  //  kernelspec used when none is named
} config_t;

#endif
