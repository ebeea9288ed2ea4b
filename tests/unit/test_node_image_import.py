"""Copying a docker image into the real node: a failed streamed import falls back to a file,
a failure names ctr's own error (not the silent `docker save` its broken pipe killed), and an
import the node does not list afterwards is an error. `docker` and `ctr` are fakes on PATH."""

import os
import stat
from pathlib import Path

import pytest

from tradewind.devstack import node_images
from tradewind.devstack.processes import StackError

FAKE_DOCKER = """#!/bin/sh
case "$1 $2" in
  "image inspect") echo sha256:abc; exit 0 ;;
esac
if [ "$1" = save ] && [ "$2" = --output ]; then echo archive > "$3"; exit 0; fi
if [ "$1" = save ]; then head -c 1000000 /dev/zero; exit 0; fi
exit 2
"""

# ctr's behaviour is set per test: STREAM and FILE are "ok" or "fail", LISTS is "yes" or "no".
FAKE_CTR = """#!/bin/sh
shift 4  # --address SOCKET --namespace NS
echo "$*" >> "$CALLS"
case "$*" in
  "images ls --quiet")
    if [ -f "$STATE/imported" ] && [ "$LISTS" = yes ]; then echo docker.io/library/own:test; fi
    exit 0 ;;
  "images import -")
    if [ "$STREAM" = ok ]; then cat > /dev/null; touch "$STATE/imported"; exit 0; fi
    head -c 10 > /dev/null; echo "ctr: failed to ingest: unexpected EOF" >&2; exit 1 ;;
  "images import "*)
    if [ "$FILE" = ok ] && [ -s "$3" ]; then touch "$STATE/imported"; exit 0; fi
    echo "ctr: no space left on device" >&2; exit 1 ;;
esac
exit 2
"""


@pytest.fixture
def node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A node's containerd socket path, with fake `docker` and `ctr` first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("docker", FAKE_DOCKER), ("ctr", FAKE_CTR)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(stat.S_IRWXU)
    state = tmp_path / "state"
    state.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("STATE", str(state))
    monkeypatch.setenv("CALLS", str(tmp_path / "calls"))
    monkeypatch.setenv("LISTS", "yes")
    socket_dir = tmp_path / "containerd"
    socket_dir.mkdir()
    return socket_dir / "containerd.sock"


def _calls(node: Path) -> list[str]:
    return (node.parent.parent / "calls").read_text().splitlines()


def test_a_streamed_import_is_the_first_try(node: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAM", "ok")
    monkeypatch.setenv("FILE", "fail")
    assert node_images.import_from_docker(node, "own:test")
    assert [c for c in _calls(node) if c.startswith("images import")] == ["images import -"]


def test_a_failed_stream_is_imported_from_a_file_next_to_the_node(
    node: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STREAM", "fail")
    monkeypatch.setenv("FILE", "ok")
    assert node_images.import_from_docker(node, "own:test")
    imports = [c for c in _calls(node) if c.startswith("images import")]
    assert imports[0] == "images import -"
    assert imports[1].startswith(f"images import {node.parent}/import-")
    assert list(node.parent.iterdir()) == [], "the archive is removed"


def test_when_both_fail_the_error_is_ctrs_own(node: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAM", "fail")
    monkeypatch.setenv("FILE", "fail")
    with pytest.raises(StackError) as failed:
        node_images.import_from_docker(node, "own:test")
    assert "no space left on device" in str(failed.value)
    assert "unexpected EOF" in str(failed.value)
    assert "docker save" not in str(failed.value)


def test_an_import_the_node_does_not_list_is_an_error(
    node: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STREAM", "ok")
    monkeypatch.setenv("FILE", "ok")
    monkeypatch.setenv("LISTS", "no")
    with pytest.raises(StackError, match=r"lists no docker\.io/library/own:test"):
        node_images.import_from_docker(node, "own:test")
