/*  assets - the console's files, built into kbridge from bridge/console/web by
    scripts/embed_files.cmake (CMakeLists.txt lists them): static, read-only, NUL-terminated
    (the NUL not counted in len).
*/
#ifndef CONSOLE_ASSETS_H
#define CONSOLE_ASSETS_H

#include <stddef.h>

typedef struct {
    const char *name;  //  as served under /console/ (index.html is also `/`)
    const unsigned char *data;
    size_t len;
} console_asset_t;

extern const console_asset_t console_assets[];
extern const size_t console_nassets;

#endif
