/*  shim - the first program a kernel process runs.

    libuv spawns without a pre-exec hook, so the parent-death signal is armed here: the
    shim sets PR_SET_PDEATHSIG and then execs the kernel's argv in place (same pid, same
    process group). If kbridge dies, even by SIGKILL, its kernels die with it.
*/
#include "commands.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>
#include <uv.h>

int cmd_kernel_shim(int argc, char **argv)
{
    //  argv: __kernel-shim PPID -- ARGV...
    if (argc < 4 || strcmp(argv[2], "--") != 0) {
        fprintf(stderr, "kbridge: __kernel-shim is internal\n");
        return 2;
    }
    pid_t parent = (pid_t) atol(argv[1]);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    //  The parent may have died before prctl took effect.
    if (getppid() != parent) _exit(1);
    execvp(argv[3], argv + 3);
    fprintf(stderr, "kbridge: cannot execute %s: %s\n", argv[3], strerror(errno));
    _exit(127);
}

const char *kbridge_exe_path(void)
{
    static char path[4096];
    static int done;
    if (!done) {
        size_t size = sizeof path;
        if (uv_exepath(path, &size) != 0) path[0] = '\0';
        done = 1;
    }
    return path[0] ? path : NULL;
}
