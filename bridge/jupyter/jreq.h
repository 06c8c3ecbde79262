/*  jreq - the JSON bodies of the Jupyter REST API, parsed and checked.

    Pure: nothing is started or looked up, so every body a client can send is fuzzed
    (tests/fuzz/fuzz_jreq.c). Bodies are JSON whatever their Content-Type (JupyterLab
    sends text/plain) and an empty body is an empty object, as in Jupyter Server.
*/
#ifndef JREQ_H
#define JREQ_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

typedef enum {
    JREQ_KERNEL_POST,    //  POST /api/kernels: {name?, path?}
    JREQ_SESSION_POST,   //  POST /api/sessions: {path?, name?, type?, kernel?: {id?, name?}}
    JREQ_SESSION_PATCH,  //  PATCH /api/sessions/ID: the same fields, each one given replaces
} jreq_kind_t;

typedef struct {
    json_t *doc_;        //  private: the parsed body; the fields below borrow from it
    const char *name, *path, *type;   //  NULL when absent (type: "notebook" for a POST)
    json_t *patch;       //  PATCH: the path, name and type given, to merge into the model
    //  Sessions: whether "kernel" was given (for a PATCH, even as null: a new kernel), and
    //  what it says. A malformed one is only an error where the kernel is needed (a
    //  POST for a path that has a session already ignores it): kernel_why says why.
    bool has_kernel;
    const char *kernel_id, *kernel_name;
    const char *kernel_why;
} jreq_t;

//  Parse a body of len bytes. Returns 0, or 400 with the reason in why (to reply with);
//  release with jreq_free in both cases.
int jreq_parse(jreq_kind_t kind, const char *body, size_t len, jreq_t *out, char *why, size_t size);
void jreq_free(jreq_t *self);

#endif
