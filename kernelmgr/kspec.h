/*  kspec - Jupyter kernelspecs: discovery, loading and argv templating.

    A kernelspec is {data_dir}/kernels/<name>/kernel.json. Data dirs are searched in
    order: each entry of $JUPYTER_PATH, the user's dir ($JUPYTER_DATA_DIR or
    ~/.local/share/jupyter), /usr/local/share/jupyter, /usr/share/jupyter; the first
    spec with a given name wins. Names are matched case-insensitively and may only hold
    [A-Za-z0-9._-].
*/
#ifndef KSPEC_H
#define KSPEC_H

#include <jansson.h>
#include <stddef.h>

typedef struct _kspec_t kspec_t;

typedef enum { KSPEC_INTERRUPT_SIGNAL = 0, KSPEC_INTERRUPT_MESSAGE = 1 } kspec_interrupt_t;

//  Find and load the spec called name. Returns NULL if there is none or it is invalid
//  (*err = KB_ENOTFOUND or KB_EINVAL; the reason is logged).
//  Caller owns return value and must destroy it when done.
kspec_t *kspec_find(const char *name, int *err);

//  Load the spec in resource_dir (the folder holding kernel.json) under name.
//  Caller owns return value and must destroy it when done.
kspec_t *kspec_load(const char *resource_dir, const char *name, int *err);

//  Discover every valid spec, sorted by name. Returns the count and sets *specs to a
//  new array. Caller owns the array and each spec: release with kspec_list_destroy.
size_t kspec_list(kspec_t ***specs);
void kspec_list_destroy(kspec_t ***specs, size_t count);

//  A copy of spec. Caller owns return value and must destroy it when done.
kspec_t *kspec_dup(const kspec_t *self);

void kspec_destroy(kspec_t **self_p);

//  Borrowed accessors.
const char *kspec_name(const kspec_t *self);
const char *kspec_display_name(const kspec_t *self);
const char *kspec_language(const kspec_t *self);
const char *kspec_resource_dir(const kspec_t *self);
kspec_interrupt_t kspec_interrupt_mode(const kspec_t *self);
//  The spec as Jupyter Server reports it: argv, env, display_name, language,
//  interrupt_mode, metadata (borrowed).
json_t *kspec_json(const kspec_t *self);
//  Resource files (logo-*.png/svg, kernel.js/css) as {"logo-64x64": "<file name>", ...}
//  (borrowed).
json_t *kspec_resources(const kspec_t *self);

//  argv with {connection_file}, {resource_dir} and {prefix} substituted; unknown
//  {names} are left untouched. Returns a NULL-terminated array.
//  Caller owns return value: free with kspec_argv_free.
char **kspec_format_argv(const kspec_t *self, const char *connection_file);
void kspec_argv_free(char **argv);

//  The spec's env entries with ${VAR} expanded from the current environment, as a new
//  object of strings. Caller owns return value.
json_t *kspec_env(const kspec_t *self);

//  Default kernel name: $KBRIDGE_DEFAULT_KERNEL or "python3".
const char *kspec_default_name(void);

#endif
