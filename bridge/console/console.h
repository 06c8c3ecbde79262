/*  console - what a browser finds at `/`: the web console (bridge/console/web, built into
    the binary), its files under /console/; JSON naming the APIs for programs that ask.
*/
#ifndef CONSOLE_H
#define CONSOLE_H

#include "../http/api.h"

//  The descriptor the server's table lists (bridge/apis.c).
extern const api_desc_t console_api;

#endif
