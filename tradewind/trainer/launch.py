"""`python -m tradewind.trainer.launch TORCHRUN-ARGS`: torchrun that passes on a failed
rank's exit code.

torchrun itself exits 1 whatever its workers exited with, so a pod would hide the trainer's
permanent exit codes (64 bad config, 65 non-finite loss, 66 data not found) and the operator
would retry what cannot succeed. This runs torchrun's own entry point with the same
arguments and exits with the code of the first rank that failed (1 if it died of a signal).
"""

from __future__ import annotations

import sys

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import main as torchrun


def failed_rank_exit_code(error: ChildFailedError) -> int:
    """The first failed rank's exit code; 1 when it has none (killed by a signal)."""
    _, failure = error.get_first_failure()
    return failure.exitcode if failure.exitcode > 0 else 1


def main(argv: list[str] | None = None) -> int:
    try:
        torchrun(argv)
    except ChildFailedError as error:
        return failed_rank_exit_code(error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
