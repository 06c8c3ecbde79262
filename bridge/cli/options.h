/*  options - the command line and environment of a kbridge command, from one table.

    Each option names its environment variable, its default and its range, so parsing is
    strict and the help is generated from the same table: a malformed or out-of-range
    value is a usage error that names the option and what it accepts; the environment
    is read first, the command line wins.
*/
#ifndef OPTIONS_H
#define OPTIONS_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef enum {
    OPT_FLAG,     //  no value: *(bool *) target = true
    OPT_STRING,   //  *(const char **) target (borrowed from argv or the environment)
    OPT_UINT,     //  a decimal count in [min, max]: *(uint64_t *) target
    OPT_SIZE,     //  bytes, with an optional K, M, G (powers of 1024) or KiB, MiB, GiB suffix
    OPT_SECONDS,  //  whole seconds in [min, max], stored as milliseconds
    OPT_CHOICE,   //  one of choices: *(const char **) target
    OPT_LIST,     //  repeatable: appended to the JSON array *(json_t **) target
    OPT_KV        //  repeatable K=V: set in the JSON object *(json_t **) target
} opt_kind_t;

typedef struct {
    const char *name;      //  without the leading "--"
    char shortname;        //  0 for none
    opt_kind_t kind;
    const char *env;       //  environment variable, or NULL
    const char *metavar;   //  "N", "ADDR"...
    const char *help;
    const char *def;       //  the default, as shown in the help (NULL: none)
    uint64_t min, max;     //  numbers: the accepted range
    const char *const *choices;  //  OPT_CHOICE: NULL-terminated
    void *target;
} opt_t;

//  Parse environment, then argv[first..argc). Positional arguments are collected in
//  *rest (a new array of borrowed strings; NULL if none wanted: then they are errors).
//  Returns 0, 1 when --help was asked for (the help is printed), or 2 on a usage error
//  (the message, naming the option, is in why).
int options_parse(const opt_t *table, size_t n, int argc, char **argv, int first, json_t **rest,
                  char *why, size_t size);
//  Print the help: usage line, then every option with its environment variable and
//  default.
void options_help(const opt_t *table, size_t n, const char *usage, const char *epilogue, FILE *out);

#endif
