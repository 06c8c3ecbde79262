"""Runs a command under kbridge.service's hardening, as far as that can be done without
systemd (the test machine does not run it as init): the unit is parsed and what it says is
applied by hand.

    unshare --mount --propagation slave python3 unitsandbox.py UNIT [--private-tmp]
        [--setenv K=V]... -- CMD...

Applied: ProtectSystem=full (/usr, /boot, /efi, /etc read-only), ProtectKernelModules=
(/usr/lib/modules inaccessible), ProtectKernelLogs= (/proc/kmsg, /dev/kmsg inaccessible),
PrivateTmp= (fresh /tmp and /var/tmp; only with --private-tmp, since the caller's files may
live in /tmp), UMask=, LimitNOFILE=, Environment=, NoNewPrivileges= (with every mount made nosuid, as
systemd does in a mount namespace), CapabilityBoundingSet=~...,
SystemCallArchitectures=native and SystemCallFilter=~@group... with SystemCallErrorNumber=
(the groups expanded by `systemd-analyze syscall-filter`, loaded through libseccomp).
Not applied: LockPersonality= and RestrictRealtime= (argument-filtered seccomp rules),
the exec directories (Configuration/State/RuntimeDirectory=: --setenv can point
XDG_RUNTIME_DIR elsewhere), the unit's own cgroup.
Anything else the unit sets and this does not know makes it fail, so the emulation cannot
silently fall behind the unit.
"""
import ctypes
import ctypes.util
import errno
import os
import resource
import signal
import subprocess
import sys

KNOWN = {
    # applied here
    "ProtectSystem", "ProtectKernelModules", "ProtectKernelLogs", "PrivateTmp", "UMask",
    "LimitNOFILE", "Environment", "CapabilityBoundingSet", "SystemCallArchitectures",
    "SystemCallFilter", "SystemCallErrorNumber", "NoNewPrivileges",
    # not hardening, or not something a process can do to itself
    "Type", "User", "WorkingDirectory", "ConfigurationDirectory", "ConfigurationDirectoryMode",
    "StateDirectory", "StateDirectoryMode", "RuntimeDirectory", "RuntimeDirectoryMode",
    "ExecStartPre", "ExecStart", "StandardOutput", "StandardError", "Restart", "RestartSec",
    "KillMode", "TimeoutStopSec",
    # not emulated (see above)
    "LockPersonality", "RestrictRealtime",
}

CAPS = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
        "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
        "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
        "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
        "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
        "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
        "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
        "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
        "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE"]
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
SYS_mount_setattr = 442  # x86_64 (and every architecture using the generic table)
AT_FDCWD = -100
AT_RECURSIVE = 0x8000
MOUNT_ATTR_NOSUID = 0x2
SCMP_ACT_ALLOW = 0x7FFF0000


def parse_unit(text):
    """{section: {key: [values...]}} (comments and blank lines skipped)."""
    sections, current = {}, None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def syscall_group(name, seen=None):
    """The syscalls of @name, nested groups included, as systemd defines them."""
    seen = seen if seen is not None else set()
    if name in seen:
        return set()
    seen.add(name)
    out = subprocess.run(["systemd-analyze", "syscall-filter", name], check=True,
                         capture_output=True, text=True).stdout
    calls = set()
    for line in out.splitlines()[1:]:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        calls |= syscall_group(line, seen) if line.startswith("@") else {line}
    return calls


def _sh(*argv):
    subprocess.run(argv, check=True)


def _inaccessible(path, blank):
    if not os.path.lexists(path):
        return
    if os.path.isdir(path):
        _sh("mount", "-t", "tmpfs", "-o", "ro,mode=000", "tmpfs", path)
    else:
        _sh("mount", "--bind", blank, path)
        _sh("mount", "-o", "remount,bind,ro", path)


def apply(service, private_tmp, setenv=()):
    unknown = set(service) - KNOWN
    if unknown:
        sys.exit(f"unitsandbox: the unit sets {sorted(unknown)}, which this does not emulate")
    one = {k: v[-1] for k, v in service.items()}
    if one.get("ProtectSystem") == "full":
        for d in ("/usr", "/boot", "/efi", "/etc"):
            if os.path.isdir(d) and not os.path.islink(d):
                _sh("mount", "--rbind", d, d)
                _sh("mount", "-o", "remount,bind,ro", d)
    elif "ProtectSystem" in one:
        sys.exit(f"unitsandbox: ProtectSystem={one['ProtectSystem']} is not emulated")
    blank = f"/run/unitsandbox-blank-{os.getpid()}"
    with open(blank, "w"):
        pass
    os.chmod(blank, 0)
    try:
        if one.get("ProtectKernelModules") == "yes":
            for d in sorted({os.path.realpath(p) for p in ("/usr/lib/modules", "/lib/modules")}):
                _inaccessible(d, blank)
        if one.get("ProtectKernelLogs") == "yes":
            for p in ("/proc/kmsg", "/dev/kmsg"):
                _inaccessible(p, blank)
    finally:
        os.unlink(blank)
    if private_tmp and one.get("PrivateTmp") == "yes":
        for d in ("/tmp", "/var/tmp"):
            _sh("mount", "-t", "tmpfs", "-o", "mode=1777,nosuid,nodev", "tmpfs", d)
    if "UMask" in one:
        os.umask(int(one["UMask"], 8))
    if "LimitNOFILE" in one:
        n = int(one["LimitNOFILE"])
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))
        except (ValueError, OSError):  # no CAP_SYS_RESOURCE (a container): as far as allowed
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(n, hard), hard))
    for assignment in list(service.get("Environment", [])) + list(setenv):
        key, _, value = assignment.partition("=")
        os.environ[key] = value
    libc = ctypes.CDLL(None, use_errno=True)
    for value in service.get("CapabilityBoundingSet", []):
        assert value.startswith("~"), "only deny lists are emulated"
        for cap in value[1:].split():
            if libc.prctl(PR_CAPBSET_DROP, CAPS.index(cap), 0, 0, 0) != 0:
                e = ctypes.get_errno()
                if e != errno.EINVAL:  # a capability this kernel does not know
                    sys.exit(f"unitsandbox: cannot drop {cap}: {os.strerror(e)}")
    if one.get("NoNewPrivileges") == "yes":
        # systemd.exec(5): with NoNewPrivileges= in a mount namespace (and no SELinux),
        # every file system is mounted nosuid.
        if "ProtectSystem" in one or "PrivateTmp" in one:
            attr = (ctypes.c_uint64 * 4)(MOUNT_ATTR_NOSUID, 0, 0, 0)
            if libc.syscall(SYS_mount_setattr, AT_FDCWD, b"/", AT_RECURSIVE, attr,
                            ctypes.sizeof(attr)) != 0:
                sys.exit(f"unitsandbox: mount_setattr nosuid: {os.strerror(ctypes.get_errno())}")
        if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            sys.exit("unitsandbox: cannot set no_new_privs")
    filters = service.get("SystemCallFilter", [])
    if filters or one.get("SystemCallArchitectures") == "native":
        seccomp = ctypes.CDLL(ctypes.util.find_library("seccomp") or "libseccomp.so.2")
        seccomp.seccomp_init.restype = ctypes.c_void_p
        seccomp.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                             ctypes.c_uint]
        seccomp.seccomp_load.argtypes = [ctypes.c_void_p]
        seccomp.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
        # A fresh context holds the native architecture only: other ABIs are refused, as
        # SystemCallArchitectures=native does.
        ctx = seccomp.seccomp_init(SCMP_ACT_ALLOW)
        err = getattr(errno, one.get("SystemCallErrorNumber", "EPERM"))
        action = 0x00050000 | (err & 0xFFFF)  # SCMP_ACT_ERRNO(err)
        for value in filters:
            assert value.startswith("~"), "only deny lists are emulated"
            calls = set()
            for item in value[1:].split():
                calls |= syscall_group(item) if item.startswith("@") else {item}
            for call in sorted(calls):
                nr = seccomp.seccomp_syscall_resolve_name(call.encode())
                if nr < 0:
                    continue  # not a syscall of this architecture
                rc = seccomp.seccomp_rule_add(ctx, action, nr, 0)
                if rc != 0:
                    sys.exit(f"unitsandbox: seccomp rule for {call}: {os.strerror(-rc)}")
        rc = seccomp.seccomp_load(ctx)
        if rc != 0:
            sys.exit(f"unitsandbox: seccomp_load: {os.strerror(-rc)}")


def main(argv):
    sep = argv.index("--")
    opts, cmd = argv[1:sep], argv[sep + 1:]
    with open(opts[0]) as f:
        service = parse_unit(f.read())["Service"]
    setenv = [opts[i + 1] for i, o in enumerate(opts) if o == "--setenv"]
    apply(service, "--private-tmp" in opts[1:], setenv)
    # systemd starts services with default signal dispositions; Python ignores these two.
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)
    os.execvp(cmd[0], cmd)


if __name__ == "__main__":
    main(sys.argv)
