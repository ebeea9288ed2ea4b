"""A local checkpoint folder mirrored in the run's object-store prefix, for your own code.

`restore` downloads the prefix into the folder before the code starts; `push` uploads the
files that changed since (new, or another size or modification time) and deletes from the
store what this node uploaded or restored and no longer has; `SyncLoop` pushes every few
seconds while the code runs and once more when it ends, so a killed pod loses at most the
last few seconds. A changed file is uploaded once it has not been written to for
SETTLE_SECONDS (not while it is being written), oldest first: a marker written after a
checkpoint goes up after it. Every node syncs its own folder; write each file from one rank.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tradewind.trainer.storage import ObjectStore, StorageError

log = logging.getLogger(__name__)

SYNC_SECONDS = 5.0
"""How often the folder is scanned and changed files uploaded while the code runs."""
SETTLE_SECONDS = 1.0
"""A file written to more recently than this waits for the next scan (or the last push)."""
Stamp = tuple[int, int]
"""(size, mtime_ns) of a file as last seen."""


class FolderSync:
    """The folder `folder` and the store `store`, kept alike from this node's side."""

    def __init__(self, store: ObjectStore, folder: Path) -> None:
        self.store = store
        self.folder = folder
        self._synced: dict[str, Stamp] = {}  # key -> stamp the store holds (uploaded/restored)

    def restore(self, source: ObjectStore | None = None) -> list[str]:
        """Download every object of `source` (default: the store) into the folder; the keys.
        Objects restored from the store itself count as synced: not uploaded again unless
        they change."""
        source = self.store if source is None else source
        keys = source.list("")
        for key in keys:
            path = self.folder.joinpath(*key.split("/"))
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".restoring-{path.name}")
            tmp.write_bytes(source.get(key))
            os.replace(tmp, path)
            if source is self.store:
                self._synced[key] = _stamp(path)
        return keys

    def scan(self) -> dict[str, Stamp]:
        """key -> stamp of every file under the folder now."""
        if not self.folder.is_dir():
            return {}
        out = {}
        for path in self.folder.rglob("*"):
            try:
                if path.is_file():
                    out[path.relative_to(self.folder).as_posix()] = _stamp(path)
            except FileNotFoundError:  # removed while scanning
                continue
        return out

    def push(self, final: bool = False) -> list[str]:
        """Upload what changed (with `final`, also what was written to a moment ago), then
        delete from the store what the folder no longer has; the keys uploaded."""
        now = self.scan()
        settled = time.time_ns() - int(SETTLE_SECONDS * 1e9)
        changed = [
            key
            for key, stamp in now.items()
            if self._synced.get(key) != stamp and (final or stamp[1] <= settled)
        ]
        uploaded = []
        for key in sorted(changed, key=lambda k: now[k][1]):
            path = self.folder.joinpath(*key.split("/"))
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                continue
            if _stamp(path) != now[key]:  # written to while read: next round
                continue
            self.store.put(key, data)
            self._synced[key] = now[key]
            uploaded.append(key)
        for key in [k for k in self._synced if k not in now]:
            self.store.delete(key)
            del self._synced[key]
        return uploaded


def _stamp(path: Path) -> Stamp:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


class SyncLoop:
    """`sync.push()` every `every` seconds on a thread of its own until `stop`, which
    pushes a last time. A failed round (store unreachable) is logged and retried."""

    def __init__(
        self,
        sync: FolderSync,
        every: float = SYNC_SECONDS,
        on_upload: Callable[[list[str]], None] | None = None,
    ) -> None:
        self.sync = sync
        self.every = every
        self.on_upload = on_upload
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="checkpoint-sync", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self._round(final=False)

    def _round(self, final: bool) -> bool:
        try:
            uploaded = self.sync.push(final=final)
        except (StorageError, OSError) as exc:
            log.warning("checkpoint upload to %s failed: %s", self.sync.store.uri(""), exc)
            return False
        if uploaded:
            log.info("uploaded %s to %s", ", ".join(uploaded), self.sync.store.uri(""))
            if self.on_upload is not None:
                self.on_upload(uploaded)
        return True

    def stop(self) -> bool:
        """Stop the loop and push what is left; whether that last push succeeded (tried
        three times)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        for _ in range(3):
            if self._round(final=True):
                return True
            time.sleep(1)
        return False
