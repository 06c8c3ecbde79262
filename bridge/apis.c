/*  apis - the table of APIs the server routes to, in order: the first that claims a
    request serves it (the port proxy first: its Host names and headers mean a sandbox's
    port whatever the path; then what E2B's headers route into a sandbox - envd, its code
    interpreter - so that no API of the host claims their paths). The only file that
    knows every API.
*/
#include "http/api.h"
#include "console/console.h"
#include "control/control.h"
#include "e2b/e2b.h"
#include "envd/envd.h"
#include "jupyter/jupyter.h"
#include "native/native.h"
#include "ops/ops.h"
#include "proxy/proxy.h"

const api_desc_t *const kb_apis[] = {&proxy_api,   &envd_api,    &e2b_api, &native_api,
                                     &jupyter_api, &control_api, &ops_api, &console_api};
const size_t kb_napis = sizeof kb_apis / sizeof *kb_apis;
