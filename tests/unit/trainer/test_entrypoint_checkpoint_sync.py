"""The checkpoint folder of your own code, mirrored in an object store (a local one here)."""

import os
import time
from pathlib import Path

from tradewind.trainer.checkpoint_sync import FolderSync, SyncLoop
from tradewind.trainer.storage import LocalStore


class CountingStore(LocalStore):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.puts: list[str] = []

    def put(self, key: str, data: bytes) -> None:
        self.puts.append(key)
        super().put(key, data)


def _write(path: Path, data: bytes, mtime_ns: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))


def test_restore_then_only_changes_go_up(tmp_path: Path) -> None:
    store = CountingStore(tmp_path / "store")
    store.put("ckpt.pt", b"epoch 3")
    store.put("shards/rank1.pt", b"shard")
    store.puts.clear()
    sync = FolderSync(store, tmp_path / "folder")
    assert sorted(sync.restore()) == ["ckpt.pt", "shards/rank1.pt"]
    assert (tmp_path / "folder" / "shards" / "rank1.pt").read_bytes() == b"shard"
    assert sync.push() == [] and sync.push() == [] and store.puts == []  # nothing changed

    _write(tmp_path / "folder" / "ckpt.pt", b"epoch 4")
    assert sync.push() == []  # written a moment ago: may still be being written
    settled = time.time_ns() - 2 * 10**9
    _write(tmp_path / "folder" / "ckpt.pt", b"epoch 4", mtime_ns=settled)
    assert sync.push() == ["ckpt.pt"]
    assert store.get("ckpt.pt") == b"epoch 4"
    assert sync.push() == []


def test_a_final_push_takes_everything_and_deletions_follow(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    folder = tmp_path / "folder"
    sync = FolderSync(store, folder)
    sync.restore()
    _write(folder / "b.pt", b"b", mtime_ns=2_000_000_000)
    _write(folder / "a.pt", b"a", mtime_ns=1_000_000_000)
    assert sync.push(final=True) == ["a.pt", "b.pt"]  # oldest first
    (folder / "a.pt").unlink()
    sync.push()  # b.pt unchanged: only the deletion
    assert store.list("") == ["b.pt"]


def test_files_restored_from_another_prefix_are_uploaded_to_this_one(tmp_path: Path) -> None:
    other = LocalStore(tmp_path / "other")
    other.put("pretrained.pt", b"weights")
    store = LocalStore(tmp_path / "store")
    sync = FolderSync(store, tmp_path / "folder")
    sync.restore(other)
    assert sync.push(final=True) == ["pretrained.pt"]
    assert store.get("pretrained.pt") == b"weights"


def test_the_loop_pushes_a_last_time_when_stopped(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    folder = tmp_path / "folder"
    uploads: list[list[str]] = []
    loop = SyncLoop(FolderSync(store, folder), every=3600, on_upload=uploads.append)
    loop.start()
    _write(folder / "last.pt", b"x")
    assert loop.stop()
    assert store.get("last.pt") == b"x" and uploads == [["last.pt"]]
