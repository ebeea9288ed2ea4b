"""What the kopf registrations promise kopf: no handler that needs a diff base, a finalizer or
progress annotations (so kopf writes nothing to a run)."""

import kopf

from tradewind.operator import main


def test_no_handler_needs_kopfs_diff_base_finalizer_or_progress_storage() -> None:
    registry = kopf.get_default_registry()
    assert not main._changing_handlers()
    assert not registry._spawning.get_all_handlers()  # no daemons or timers: no finalizer
    assert main.UnreadDiffBase(prefix="tradewind.dev").build(body=kopf.Body({})) == {}
