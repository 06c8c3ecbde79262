/*  options - strict, table-driven command lines. */
#include "options.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static int s_number(const char *text, uint64_t *out)
{
    if (!*text || strlen(text) > 19) return -1;
    uint64_t v = 0;
    for (const char *c = text; *c; c++) {
        if (!isdigit((unsigned char) *c)) return -1;
        v = v * 10 + (uint64_t) (*c - '0');
    }
    *out = v;
    return 0;
}

static int s_size(const char *text, uint64_t *out)
{
    size_t len = strlen(text), digits = 0;
    while (digits < len && isdigit((unsigned char) text[digits])) digits++;
    if (digits == 0 || digits > 19) return -1;
    char num[24];
    memcpy(num, text, digits);
    num[digits] = '\0';
    uint64_t v;
    if (s_number(num, &v) != 0) return -1;
    const char *suffix = text + digits;
    uint64_t mult = 1;
    if (!*suffix) mult = 1;
    else if (!strcasecmp(suffix, "k") || !strcasecmp(suffix, "kib") || !strcasecmp(suffix, "kb")) mult = 1ull << 10;
    else if (!strcasecmp(suffix, "m") || !strcasecmp(suffix, "mib") || !strcasecmp(suffix, "mb")) mult = 1ull << 20;
    else if (!strcasecmp(suffix, "g") || !strcasecmp(suffix, "gib") || !strcasecmp(suffix, "gb")) mult = 1ull << 30;
    else return -1;
    if (v > UINT64_MAX / mult) return -1;
    *out = v * mult;
    return 0;
}

static void s_range(const opt_t *o, char *out, size_t size)
{
    if (o->kind == OPT_SIZE)
        snprintf(out, size, "%llu to %llu bytes (K, M, G suffixes allowed)", (unsigned long long) o->min,
                 (unsigned long long) o->max);
    else if (o->kind == OPT_SECONDS)
        snprintf(out, size, "%llu to %llu seconds", (unsigned long long) o->min, (unsigned long long) o->max);
    else
        snprintf(out, size, "an integer from %llu to %llu", (unsigned long long) o->min, (unsigned long long) o->max);
}

static int s_set(const opt_t *o, const char *value, const char *label, char *why, size_t size)
{
    char range[160];
    uint64_t v;
    switch (o->kind) {
    case OPT_FLAG: *(bool *) o->target = true; return 0;
    case OPT_STRING: *(const char **) o->target = value; return 0;
    case OPT_UINT:
    case OPT_SECONDS:
    case OPT_SIZE:
        if ((o->kind == OPT_SIZE ? s_size(value, &v) : s_number(value, &v)) != 0 || v < o->min || v > o->max) {
            s_range(o, range, sizeof range);
            snprintf(why, size, "%s: bad value '%s' (wanted %s)", label, value, range);
            return 2;
        }
        *(uint64_t *) o->target = o->kind == OPT_SECONDS ? v * 1000u : v;
        return 0;
    case OPT_CHOICE:
        for (size_t i = 0; o->choices[i]; i++)
            if (strcmp(o->choices[i], value) == 0) {
                *(const char **) o->target = o->choices[i];
                return 0;
            }
        {
            char list[200] = "";
            for (size_t i = 0; o->choices[i]; i++) {
                strncat(list, i ? ", " : "", sizeof list - strlen(list) - 1);
                strncat(list, o->choices[i], sizeof list - strlen(list) - 1);
            }
            snprintf(why, size, "%s: bad value '%s' (one of %s)", label, value, list);
        }
        return 2;
    case OPT_LIST: json_array_append_new(*(json_t **) o->target, json_string(value)); return 0;
    case OPT_KV: {
        const char *eq = strchr(value, '=');
        if (!eq || eq == value) {
            snprintf(why, size, "%s wants KEY=VALUE, got '%s'", label, value);
            return 2;
        }
        char *key = strndup(value, (size_t) (eq - value));
        if (key) json_object_set_new(*(json_t **) o->target, key, json_string(eq + 1));
        free(key);
        return 0;
    }
    }
    return 2;
}

int options_parse(const opt_t *table, size_t n, int argc, char **argv, int first, json_t **rest,
                  char *why, size_t size)
{
    for (size_t i = 0; i < n; i++) {
        const char *v = table[i].env ? getenv(table[i].env) : NULL;
        if (!v || table[i].kind == OPT_LIST || table[i].kind == OPT_KV) continue;
        if (table[i].kind == OPT_FLAG) {
            if (*v && strcmp(v, "0") != 0 && strcasecmp(v, "false") != 0) *(bool *) table[i].target = true;
            continue;
        }
        char label[96];
        snprintf(label, sizeof label, "$%s (--%s)", table[i].env, table[i].name);
        int rc = s_set(&table[i], v, label, why, size);
        if (rc) return rc;
    }
    if (rest) *rest = json_array();
    bool only_positional = false;
    for (int a = first; a < argc; a++) {
        const char *arg = argv[a];
        if (only_positional || arg[0] != '-' || strcmp(arg, "-") == 0) {
            if (!rest) {
                snprintf(why, size, "unexpected argument '%s'", arg);
                return 2;
            }
            json_array_append_new(*rest, json_string(arg));
            continue;
        }
        if (strcmp(arg, "--") == 0) {
            only_positional = true;
            continue;
        }
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) return 1;
        const opt_t *o = NULL;
        const char *value = NULL;
        if (arg[1] == '-') {
            const char *name = arg + 2;
            const char *eq = strchr(name, '=');
            size_t nlen = eq ? (size_t) (eq - name) : strlen(name);
            for (size_t i = 0; i < n && !o; i++)
                if (strlen(table[i].name) == nlen && strncmp(table[i].name, name, nlen) == 0) o = &table[i];
            if (eq) value = eq + 1;
        } else if (arg[1] && !arg[2]) {
            for (size_t i = 0; i < n && !o; i++)
                if (table[i].shortname == arg[1]) o = &table[i];
        }
        if (!o) {
            snprintf(why, size, "unknown option '%s' (--help lists them)", arg);
            return 2;
        }
        if (o->kind == OPT_FLAG) {
            if (value) {
                snprintf(why, size, "--%s takes no value", o->name);
                return 2;
            }
            *(bool *) o->target = true;
            continue;
        }
        if (!value) {
            if (a + 1 >= argc) {
                snprintf(why, size, "--%s needs a value (%s)", o->name, o->metavar ? o->metavar : "VALUE");
                return 2;
            }
            value = argv[++a];
        }
        char label[80];
        snprintf(label, sizeof label, "--%s", o->name);
        int rc = s_set(o, value, label, why, size);
        if (rc) return rc;
    }
    return 0;
}

void options_help(const opt_t *table, size_t n, const char *usage, const char *epilogue, FILE *out)
{
    fprintf(out, "%s\n\noptions:\n", usage);
    for (size_t i = 0; i < n; i++) {
        const opt_t *o = &table[i];
        char left[64];
        if (o->kind == OPT_FLAG)
            snprintf(left, sizeof left, "  %s%c%s--%s", o->shortname ? "-" : "", o->shortname ? o->shortname : ' ',
                     o->shortname ? ", " : "", o->name);
        else
            snprintf(left, sizeof left, "  --%s %s", o->name, o->metavar ? o->metavar : "VALUE");
        if (!o->shortname && o->kind == OPT_FLAG) snprintf(left, sizeof left, "  --%s", o->name);
        fprintf(out, "%-30s %s", left, o->help);
        bool paren = o->def || o->env || o->kind == OPT_LIST || o->kind == OPT_KV;
        if (paren) {
            fprintf(out, " (");
            bool any = false;
            if (o->kind == OPT_LIST || o->kind == OPT_KV) {
                fprintf(out, "repeatable");
                any = true;
            }
            if (o->def) {
                fprintf(out, "%sdefault %s", any ? "; " : "", o->def);
                any = true;
            }
            if (o->env) fprintf(out, "%s$%s", any ? "; " : "", o->env);
            fprintf(out, ")");
        }
        fputc('\n', out);
    }
    if (epilogue) fprintf(out, "\n%s\n", epilogue);
}
