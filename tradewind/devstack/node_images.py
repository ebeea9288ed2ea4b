"""Images for the real node that need no registry: tiny single-layer images made from static
binaries of this machine (the pod sandbox's `pause`, Debian's static busybox for tests),
written as `docker save` archives and imported into the node's containerd
(`ctr -n k8s.io images import`). Other images reach the node from a local registry, or from
docker with `import_from_docker`."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
import tempfile
from pathlib import Path

from pydantic import BaseModel, Field

from tradewind.devstack.processes import StackError

CRI_NAMESPACE = "k8s.io"
BUSYBOX = Path("/bin/busybox")
"""Debian's busybox-static: one static binary with sh, nslookup, wget, httpd, sleep."""
IMPORT_SECONDS = 1800
"""A trainer image is gigabytes; a slow disk imports it in minutes."""


class TinyImage(BaseModel):
    """A one-layer image: host files copied to paths in the image, links, a command."""

    ref: str = Field(description="Image reference, e.g. tradewind.local/pause:3.10.1.")
    files: dict[str, Path] = Field(description="Path in the image -> file on this machine.")
    symlinks: dict[str, str] = Field(default_factory=dict, description="Link -> its target.")
    entrypoint: list[str] = Field(default_factory=list)
    cmd: list[str] = Field(default_factory=list)
    user: str = ""


def pause_image(pause_binary: Path, tag: str) -> TinyImage:
    """The pod sandbox image, as upstream's: the static `pause` alone, run as 65535."""
    return TinyImage(
        ref=f"tradewind.local/pause:{tag}",
        files={"pause": pause_binary},
        entrypoint=["/pause"],
        user="65535:65535",
    )


def busybox_image() -> TinyImage:
    """A small image with a shell and network tools (tests of pods, DNS and Services)."""
    if not BUSYBOX.is_file():
        raise StackError(f"{BUSYBOX} not found: apt-get install busybox-static")
    version = _busybox_version()
    return TinyImage(
        ref=f"tradewind.local/busybox:{version}",
        files={"bin/busybox": BUSYBOX},
        symlinks={f"bin/{applet}": "busybox" for applet in _busybox_applets()},
        cmd=["sh"],
    )


def _busybox_applets() -> list[str]:
    listed = subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True, check=False)
    return [a for a in listed.stdout.split() if a != "busybox" and "/" not in a]


def _busybox_version() -> str:
    first = subprocess.run([str(BUSYBOX)], capture_output=True, text=True, check=False).stdout
    words = first.split()  # "BusyBox v1.35.0 (Debian 1:1.35.0-4+b3) multi-call binary."
    return words[1].lstrip("v") if len(words) > 1 and words[0] == "BusyBox" else "local"


def _layer(image: TinyImage) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs = sorted({str(Path(p).parent) for p in (*image.files, *image.symlinks)} - {"."})
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
            tar.addfile(info)
        for path, source in sorted(image.files.items()):
            data = source.read_bytes()
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(data), 0o755, 0
            tar.addfile(info, io.BytesIO(data))
        for link, target in sorted(image.symlinks.items()):
            info = tarfile.TarInfo(link)
            info.type, info.linkname, info.mode, info.mtime = tarfile.SYMTYPE, target, 0o777, 0
            tar.addfile(info)
    return buf.getvalue()


def write_archive(image: TinyImage, path: Path) -> None:
    """The image as a `docker save` archive (manifest.json, config, one layer)."""
    layer = _layer(image)
    layer_digest = hashlib.sha256(layer).hexdigest()
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {
            "Entrypoint": image.entrypoint or None,
            "Cmd": image.cmd or None,
            "User": image.user,
            "Env": ["PATH=/bin"],
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_digest}"]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "tradewind node_images"}],
    }
    config_bytes = json.dumps(config, sort_keys=True).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    manifest = [
        {"Config": config_name, "RepoTags": [image.ref], "Layers": [f"{layer_digest}/layer.tar"]}
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in (
            (config_name, config_bytes),
            (f"{layer_digest}/layer.tar", layer),
            ("manifest.json", json.dumps(manifest).encode()),
        ):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))


def ctr(socket: Path, *args: str, stdin: bytes | None = None, timeout: float = 300) -> str:
    """Run Debian's `ctr` against the node's containerd, in the CRI namespace."""
    result = subprocess.run(
        _ctr_argv(socket, *args),
        input=stdin,
        capture_output=True,
        check=False,
        timeout=timeout,
    )
    if result.returncode != 0:
        raise StackError(f"ctr {' '.join(args)}: {result.stderr.decode(errors='replace').strip()}")
    return result.stdout.decode(errors="replace")


def _ctr_argv(socket: Path, *args: str) -> list[str]:
    return ["ctr", "--address", str(socket), "--namespace", CRI_NAMESPACE, *args]


def image_refs(socket: Path) -> set[str]:
    return set(ctr(socket, "images", "ls", "--quiet").split())


def import_image(socket: Path, image: TinyImage, work_dir: Path) -> bool:
    """Import `image` unless containerd has it; True if it was imported."""
    if image.ref in image_refs(socket):
        return False
    archive = work_dir / (image.ref.replace("/", "_").replace(":", "_") + ".tar")
    write_archive(image, archive)
    import_archive(socket, archive)
    archive.unlink()
    return True


def import_archive(socket: Path, archive: Path) -> None:
    """Import a `docker save` or OCI archive (its image names come from the archive)."""
    ctr(socket, "images", "import", str(archive), timeout=IMPORT_SECONDS)


def import_from_docker(socket: Path, ref: str) -> bool:
    """Copy an image that local docker holds (a Debian base, the trainer image built here)
    into the node, unless the node already holds that image (the same config digest: docker's
    image ID). True if it was imported.

    It is streamed (`docker save | ctr images import -`); if the stream fails, it is saved to
    a file next to the node's containerd and imported from there, since a piped import can
    fail where the same archive imports from a file. Either way the node must then list it."""
    image_id = _docker(["image", "inspect", "--format", "{{.Id}}", ref]).strip()
    name = _normalized(ref)
    if name in image_refs(socket) and _node_config_digest(socket, name) == image_id:
        return False
    try:
        _import_streamed(socket, ref)
    except StackError as streamed:
        try:
            _import_through_file(socket, ref)
        except StackError as from_file:
            raise StackError(f"{from_file} (streamed before: {streamed})") from from_file
    if name not in image_refs(socket):
        raise StackError(f"ctr images import ({ref}) ended well, but the node lists no {name}")
    return True


def _import_through_file(socket: Path, ref: str) -> None:
    with tempfile.TemporaryDirectory(dir=socket.parent, prefix="import-") as tmp:
        archive = Path(tmp) / "image.tar"
        _docker(["save", "--output", str(archive), ref])
        import_archive(socket, archive)


def _import_streamed(socket: Path, ref: str) -> None:
    saver = subprocess.Popen(
        ["docker", "save", ref], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert saver.stdout is not None
    importer = subprocess.run(
        _ctr_argv(socket, "images", "import", "-"),
        stdin=saver.stdout, capture_output=True, check=False, timeout=IMPORT_SECONDS,
    )  # fmt: skip
    saver.stdout.close()  # a failed import's saver then dies of the broken pipe, silently
    saved_err = saver.stderr.read() if saver.stderr else b""
    saved = saver.wait()
    if importer.returncode != 0:
        error = importer.stderr.decode(errors="replace").strip()
        raise StackError(f"ctr images import - ({ref}): {error or f'exit {importer.returncode}'}")
    if saved != 0:
        error = saved_err.decode(errors="replace").strip()
        raise StackError(f"docker save {ref}: {error or f'exit {saved}'}")


def _docker(args: list[str]) -> str:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise StackError(f"docker {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def _normalized(ref: str) -> str:
    """The name containerd (and the kubelet) give a short docker reference."""
    name = ref if "/" in ref else f"library/{ref}"
    first = name.split("/", 1)[0]
    if "." not in first and ":" not in first and first != "localhost":
        name = f"docker.io/{name}"
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def _node_config_digest(socket: Path, name: str) -> str:
    """The config digest of the node's image `name` (docker's image ID for the same image)."""
    manifest = ctr(socket, "content", "get", _target_digest(socket, name))
    doc = json.loads(manifest)
    if "manifests" in doc:  # an index: its one manifest
        manifest = ctr(socket, "content", "get", doc["manifests"][0]["digest"])
        doc = json.loads(manifest)
    return str(doc["config"]["digest"])


def _target_digest(socket: Path, name: str) -> str:
    for line in ctr(socket, "images", "ls").splitlines()[1:]:
        fields = line.split()
        if fields and fields[0] == name:
            return next(f for f in fields if f.startswith("sha256:"))
    raise StackError(f"the node has no image {name}")
