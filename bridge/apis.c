/*  apis - the table of APIs the server routes to, in order: the first that claims a
    request serves it (the port proxy first: its Host names and headers mean a sandbox's
    port whatever the path). The only file that knows every API.
*/
#include "http/api.h"
#include "console/console.h"
#include "control/control.h"
#include "e2b/e2b.h"
#include "jupyter/jupyter.h"
#include "native/native.h"
#include "proxy/proxy.h"

const api_desc_t *const kb_apis[] = {&proxy_api,   &native_api, &jupyter_api,
                                     &control_api, &e2b_api,    &console_api};
const size_t kb_napis = sizeof kb_apis / sizeof *kb_apis;
