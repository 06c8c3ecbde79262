/*  kbridge - a Jupyter-kernel bridge service. Dispatches to the subcommands. */
#include "cli/commands.h"
#include "../base/klog.h"

#include <czmq.h>
#include <sodium.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>

static void s_usage(FILE *out)
{
    fprintf(out, "usage: kbridge [command] [options]\n\n"
                 "commands:\n"
                 "  serve   run the service (the default: `kbridge --port 50123` is `kbridge serve --port 50123`)\n"
                 "  exec    run cells in a fresh kernel and print Executions as JSON lines\n\n"
                 "  -V, --version   print the version\n\n"
                 "`kbridge <command> --help` describes each command's options.\n");
}

int main(int argc, char **argv)
{
    //  czmq must not install its own SIGINT/SIGTERM handlers: the loop handles signals.
    zsys_handler_set(NULL);
    //  Each kernel holds five ZeroMQ sockets and each Jupyter channels connection three
    //  more: lift the soft fd limit to the hard one (libzmq's own cap is raised when the
    //  first kernel starts, see kernel.c).
    struct rlimit nofile;
    if (getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur < nofile.rlim_max) {
        nofile.rlim_cur = nofile.rlim_max;
        setrlimit(RLIMIT_NOFILE, &nofile);
    }
    if (sodium_init() < 0) {
        fprintf(stderr, "kbridge: libsodium failed to initialize\n");
        return 1;
    }
    int rc;
    if (argc >= 2 && (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "-V") == 0)) {
        printf("kbridge %s\n", PROJECT_VERSION);
        return 0;
    }
    if (argc >= 2 && strcmp(argv[1], "exec") == 0)
        rc = cmd_exec(argc - 1, argv + 1);
    else if (argc >= 2 && strcmp(argv[1], "serve") == 0)
        rc = cmd_serve(argc - 1, argv + 1);
    else if (argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
        s_usage(stdout);
        return 0;
    } else if (argc == 1 || argv[1][0] == '-') {
        //  Options without a command are the service's.
        rc = cmd_serve(argc, argv);
    } else {
        fprintf(stderr, "kbridge: unknown command '%s'\n\n", argv[1]);
        s_usage(stderr);
        return 2;
    }
    zsys_shutdown();
    return rc;
}
