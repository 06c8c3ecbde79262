/*  rundir - this kbridge instance's private directory for connection files.

    $XDG_RUNTIME_DIR/kbridge/<pid> or /tmp/kbridge-<uid>/<pid>, mode 0700. Creating one
    removes the directories of kbridge instances that no longer run (a crash leaves
    its connection files behind); destroying it removes everything inside.
*/
#ifndef RUNDIR_H
#define RUNDIR_H

typedef struct _rundir_t rundir_t;

//  Create (and clean stale siblings of) this instance's directory. base overrides the
//  default parent directory when not NULL. Returns NULL on failure (logged).
//  Caller owns return value and must destroy it when done.
rundir_t *rundir_new(const char *base);
//  Remove the directory and its files. Nullifies *self_p.
void rundir_destroy(rundir_t **self_p);
const char *rundir_path(const rundir_t *self);

#endif
