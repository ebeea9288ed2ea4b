"""`python -m tradewind.trainer.launch TORCHRUN-ARGS`: torchrun that passes on a failed
rank's exit code.

torchrun itself exits 1 whatever its workers exited with, so a pod would hide the trainer's
permanent exit codes (64 bad config, 65 non-finite loss, 66 data not found) and the operator
would retry what cannot succeed. This runs torchrun's own entry point with the same
arguments and exits with the code of the first rank that failed (1 if it died of a signal).

With c10d rendezvous it also says which pod hosts the rendezvous store: the one whose name
the endpoint holds, node rank 0 (`is_host` in `--rdzv-conf`, from PET_NODE_RANK). torchrun
otherwise infers it by resolving the endpoint's name and comparing addresses; before cluster
DNS has that pod's record (a pod starts before the EndpointSlice controller catches up), pod
0 concludes it is not the host, every pod waits for a store nobody serves, and the attempt
fails. The other pods' clients retry the name until it resolves.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import main as torchrun


def failed_rank_exit_code(error: ChildFailedError) -> int:
    """The first failed rank's exit code; 1 when it has none (killed by a signal)."""
    _, failure = error.get_first_failure()
    return failure.exitcode if failure.exitcode > 0 else 1


def with_store_host(argv: list[str], env: Mapping[str, str]) -> list[str]:
    """`argv` with `--rdzv-conf=is_host=<node rank is 0>` first, for a c10d rendezvous of a
    pod with a node rank (PET_NODE_RANK) that gives no rendezvous config of its own."""
    names = [a.split("=", 1)[0].replace("_", "-") for a in argv]
    if "--rdzv-conf" in names or "--standalone" in names or "PET_NODE_RANK" not in env:
        return argv
    backend = env.get("PET_RDZV_BACKEND", "static")
    for i, name in enumerate(names):
        if name == "--rdzv-backend":
            backend = argv[i].split("=", 1)[1] if "=" in argv[i] else argv[i + 1 : i + 2][0]
    if backend != "c10d":
        return argv
    return [f"--rdzv-conf=is_host={str(env['PET_NODE_RANK'] == '0').lower()}", *argv]


def main(argv: list[str] | None = None) -> int:
    argv = with_store_host(list(sys.argv[1:] if argv is None else argv), os.environ)
    try:
        torchrun(argv)
    except ChildFailedError as error:
        return failed_rank_exit_code(error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
