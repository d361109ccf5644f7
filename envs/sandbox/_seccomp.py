"""The seccomp policy both contained backends share: deny what sandboxed code never needs.

The list covers what Docker's default profile blocks for a process without capabilities
(namespaces, mounts, tracing, keyrings, BPF, kernel modules, clocks, NUMA policy), plus
ptrace, io_uring and the new mount API. Denied calls fail with EPERM, so a program that
probes them sees an ordinary error rather than dying. clone3 gets ENOSYS: its flags sit
behind a pointer that seccomp cannot read, and libc falls back to clone, whose flags it can.
"""

from __future__ import annotations

import json

DENIED = (
    "unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "mount_setattr",
    "fsopen", "fsconfig", "fsmount", "fspick", "move_mount", "open_tree",
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp",
    "keyctl", "add_key", "request_key", "bpf", "perf_event_open", "userfaultfd",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "create_module", "get_kernel_syms", "query_module",
    "open_by_handle_at", "name_to_handle_at", "lookup_dcookie", "fanotify_init",
    "swapon", "swapoff", "reboot", "acct", "quotactl", "nfsservctl", "uselib", "ustat", "sysfs",
    "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "syslog", "vhangup",
    "iopl", "ioperm", "mbind", "set_mempolicy", "get_mempolicy", "move_pages",
)
# CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET
NEW_NAMESPACE_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000)
EPERM, ENOSYS = 1, 38
_KAFEL_NAMES = {"umount2": "umount"}  # kafel's x86_64 table names syscall 166 `umount`


def kafel_policy() -> str:
    """The policy for nsjail's --seccomp_string."""
    names = ", ".join(_KAFEL_NAMES.get(n, n) for n in DENIED)
    mask = hex(sum(NEW_NAMESPACE_FLAGS))
    return (f"POLICY trajdistill {{ ERRNO({EPERM}) {{ {names}, clone {{ (clone_flags & {mask}) != 0 }} }}, "
            f"ERRNO({ENOSYS}) {{ clone3 }} }} USE trajdistill DEFAULT ALLOW")


def docker_profile() -> str:
    """The same policy as a Docker seccomp profile (JSON), for `--security-opt seccomp=`."""
    clone_rules = [{"names": ["clone"], "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM,
                    "args": [{"index": 0, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ"}]}
                   for flag in NEW_NAMESPACE_FLAGS]
    return json.dumps({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": list(DENIED), "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM},
                     {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS},
                     *clone_rules],
    })
