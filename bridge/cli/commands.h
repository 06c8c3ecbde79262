/*  commands - the kbridge subcommands, each a main() of its own. */
#ifndef COMMANDS_H
#define COMMANDS_H

//  kbridge exec [--kernel NAME] [--cwd DIR] [--timeout-ms N] CODE...
int cmd_exec(int argc, char **argv);
//  kbridge serve [--ip IP] [--port N] [--token T] ...
int cmd_serve(int argc, char **argv);

//  Path of the running kbridge executable (for the shim), or NULL. Borrowed.
const char *kbridge_exe_path(void);

#endif
