"""The executor's container shim: new mount, UTS and PID namespaces, then the container's
init script as PID 1 of the new PID namespace; waits for it and exits with its status, 128 +
the signal when a signal ended it (137 for SIGKILL, as a kubelet reports it).

`python -m tradewind.devstack.executor_shim SCRIPT COMMAND...` (run inside the pod's network
namespace by `ip netns exec`). The shim ignores SIGTERM and SIGINT: they are for the
container's PID 1; when the shim dies, the kernel kills PID 1 (PR_SET_PDEATHSIG) and with it
the whole namespace.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWPID = 0x20000000
PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWPID) != 0:
        errno = ctypes.get_errno()
        print(f"executor shim: unshare: {os.strerror(errno)}", file=sys.stderr)
        return 126
    pid = os.fork()
    if pid == 0:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        try:
            os.execvp("sh", ["sh", *argv])
        finally:
            os._exit(127)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


if __name__ == "__main__":
    os._exit(main(sys.argv[1:]))
