/*  console - what a browser (or a curious program) finds at `/`: a page that says what
    this server is, which APIs it serves and where; JSON for programs that ask for it.
*/
#ifndef CONSOLE_H
#define CONSOLE_H

#include "../http/api.h"

//  The descriptor the server's table lists (bridge/apis.c).
extern const api_desc_t console_api;

#endif
