"""What the executor does for one container of a pod, the way a kubelet would: resolve its
environment, materialise its volumes under the pod's folder, expand `$(VAR)` in command and
args, and start it in the pod's network namespace with a mount namespace of its own (volumes
bind-mounted at their mount paths, the pod's hosts file over /etc/hosts), a UTS namespace (the
pod's hostname), a PID namespace (killing its first process kills everything in it) and a
memory cgroup (the memory limit; `OOMKilled` when the kernel killed in it).

"The image" is this checkout's environment: `<venv>/bin` first on PATH.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Manifest = dict[str, Any]
Fetch = Callable[[str, str, str], Manifest | None]
"""(kind 'configmaps'|'secrets', namespace, name) -> the object, or None if absent."""

CGROUP_ROOT = Path("/sys/fs/cgroup/memory")
_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")
_FIELD = re.compile(r"^metadata\.(annotations|labels)\['(.+)'\]$")
_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9}


class ConfigError(RuntimeError):
    """The container cannot be created yet (a missing Secret key, an unsupported volume):
    reported as a waiting reason, retried like a kubelet retries."""


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: defined variables are replaced, `$$` is a `$`, an
    undefined reference is left as written."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _VAR_REF.sub(sub, text)


def quantity_bytes(value: str) -> int:
    for suffix, factor in _UNITS.items():
        if value.endswith(suffix):
            return int(float(value[: -len(suffix)]) * factor)
    return int(float(value))


def field_value(pod: Manifest, path: str, pod_ip: str | None) -> str:
    meta, spec = pod["metadata"], pod["spec"]
    if m := _FIELD.match(path):
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    simple = {
        "metadata.name": meta["name"],
        "metadata.namespace": meta["namespace"],
        "metadata.uid": meta["uid"],
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", "default"),
        "status.podIP": pod_ip or "",
        "status.podIPs": pod_ip or "",
        "status.hostIP": pod_ip or "",
    }
    if path not in simple:
        raise ConfigError(f"fieldRef {path!r} is not supported by the executor")
    return str(simple[path])


def _key_ref(kind: str, ref: Manifest, namespace: str, fetch: Fetch) -> str | None:
    obj = fetch(kind, namespace, ref["name"])
    optional = bool(ref.get("optional"))
    if obj is None:
        if optional:
            return None
        raise ConfigError(f"{kind[:-1]} {ref['name']!r} not found")
    if kind == "secrets":
        data = {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
        data |= obj.get("stringData") or {}
    else:
        data = dict(obj.get("data") or {})
    if ref["key"] not in data:
        if optional:
            return None
        raise ConfigError(f"key {ref['key']!r} not found in {kind[:-1]} {ref['name']!r}")
    return str(data[ref["key"]])


def _env_from(container: Manifest, namespace: str, fetch: Fetch) -> dict[str, str]:
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        for kind, key in (("configmaps", "configMapRef"), ("secrets", "secretRef")):
            if key not in source:
                continue
            obj = fetch(kind, namespace, source[key]["name"])
            if obj is None:
                if source[key].get("optional"):
                    continue
                raise ConfigError(f"{kind[:-1]} {source[key]['name']!r} not found")
            for k, v in (obj.get("data") or {}).items():
                env[prefix + k] = base64.b64decode(v).decode() if kind == "secrets" else v
    return env


def _value_from(
    pod: Manifest, container: Manifest, name: str, source: Manifest, pod_ip: str | None,
    fetch: Fetch,
) -> str | None:  # fmt: skip
    namespace = pod["metadata"]["namespace"]
    if "fieldRef" in source:
        return field_value(pod, source["fieldRef"]["fieldPath"], pod_ip)
    if "secretKeyRef" in source:
        return _key_ref("secrets", source["secretKeyRef"], namespace, fetch)
    if "configMapKeyRef" in source:
        return _key_ref("configmaps", source["configMapKeyRef"], namespace, fetch)
    if "resourceFieldRef" in source:
        ref = source["resourceFieldRef"]
        kind, _, res = ref["resource"].partition(".")
        return str(((container.get("resources") or {}).get(kind) or {}).get(res, "0"))
    raise ConfigError(f"env {name}: unsupported valueFrom {sorted(source)}")


def resolve_env(
    pod: Manifest, container: Manifest, pod_ip: str | None, fetch: Fetch
) -> dict[str, str]:
    """The container's variables in order (later ones may refer to earlier ones)."""
    env = _env_from(container, pod["metadata"]["namespace"], fetch)
    for var in container.get("env") or []:
        name, source = var["name"], var.get("valueFrom")
        if source is None:
            env[name] = expand(var.get("value", ""), env)
        elif (value := _value_from(pod, container, name, source, pod_ip, fetch)) is not None:
            env[name] = value
    return env


@dataclass
class Mount:
    source: Path | None
    """None mounts a fresh tmpfs (an emptyDir with medium Memory)."""
    target: str
    read_only: bool = False
    size: int | None = None
    """The tmpfs's size in bytes (the emptyDir's sizeLimit); None: the kernel's default."""


@dataclass(frozen=True)
class Security:
    """What the executor applies of a container's securityContext: a read-only root
    filesystem and no privilege escalation (PR_SET_NO_NEW_PRIVS). runAsUser, runAsGroup,
    fsGroup, capabilities and seccomp are accepted, not applied: "the image" is this
    checkout's environment, whose interpreter may be readable by its owner only (under
    /root), so the container runs as the executor's user."""

    read_only_root: bool = False
    no_new_privs: bool = False


def container_security(pod: Manifest, container: Manifest) -> Security:
    """The container's Security; ConfigError where a kubelet refuses to start it
    (runAsNonRoot without a non-zero runAsUser: this image runs as root)."""
    pod_ctx = pod["spec"].get("securityContext") or {}
    ctx = {**pod_ctx, **(container.get("securityContext") or {})}
    if ctx.get("runAsNonRoot") and not ctx.get("runAsUser"):
        raise ConfigError("container has runAsNonRoot and image will run as root")
    return Security(
        read_only_root=bool(ctx.get("readOnlyRootFilesystem")),
        no_new_privs=ctx.get("allowPrivilegeEscalation") is False,
    )


def _write_items(
    directory: Path,
    data: Mapping[str, bytes],
    items: list[Manifest] | None,
    mode: int,
) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    selected = (
        [(i["key"], i["path"], i.get("mode", mode)) for i in items if i["key"] in data]
        if items
        else [(k, k, mode) for k in data]
    )
    for key, rel, item_mode in selected:
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data[key])
        path.chmod(item_mode)


def _object_data(kind: str, obj: Manifest) -> dict[str, bytes]:
    if kind == "secrets":
        return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
    out = {k: str(v).encode() for k, v in (obj.get("data") or {}).items()}
    out |= {k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()}
    return out


def materialise_volumes(
    pod: Manifest,
    pod_dir: Path,
    fetch: Fetch,
    token: Callable[[str, Manifest], str],
) -> dict[str, Path | None]:
    """Each volume of the pod as a folder under `pod_dir/volumes` (None: a tmpfs)."""
    namespace = pod["metadata"]["namespace"]
    out: dict[str, Path | None] = {}
    for vol in pod["spec"].get("volumes") or []:
        name, directory = vol["name"], pod_dir / "volumes" / vol["name"]
        if "emptyDir" in vol:
            if (vol["emptyDir"] or {}).get("medium") == "Memory":
                out[name] = None
                continue
            directory.mkdir(parents=True, exist_ok=True)
            directory.chmod(0o777)  # as a kubelet makes it: writable whoever the pod runs as
        elif "configMap" in vol or "secret" in vol:
            kind, spec = (
                ("configmaps", vol["configMap"])
                if "configMap" in vol
                else ("secrets", vol["secret"])
            )
            obj_name = spec.get("name") or spec.get("secretName")
            obj = fetch(kind, namespace, obj_name)
            if obj is None and not spec.get("optional"):
                raise ConfigError(f"volume {name}: {kind[:-1]} {obj_name!r} not found")
            data = _object_data(kind, obj) if obj else {}
            _write_items(directory, data, spec.get("items"), spec.get("defaultMode", 0o644))
        elif "projected" in vol:
            _projected(pod, vol["projected"], directory, fetch, token)
        elif "downwardAPI" in vol:
            _downward(pod, vol["downwardAPI"].get("items") or [], directory)
        elif "hostPath" in vol:
            directory = Path(vol["hostPath"]["path"])
        else:
            kinds = sorted(k for k in vol if k != "name")
            raise ConfigError(f"volume {name}: {', '.join(kinds)} is not supported by the executor")
        out[name] = directory
    return out


def _projected(
    pod: Manifest,
    spec: Manifest,
    directory: Path,
    fetch: Fetch,
    token: Callable[[str, Manifest], str],
) -> None:
    namespace = pod["metadata"]["namespace"]
    mode = spec.get("defaultMode", 0o644)
    directory.mkdir(parents=True, exist_ok=True)
    for source in spec.get("sources") or []:
        if "serviceAccountToken" in source:
            sat = source["serviceAccountToken"]
            path = directory / sat["path"]
            path.write_text(token(pod["spec"].get("serviceAccountName", "default"), sat))
            path.chmod(mode)
        elif "downwardAPI" in source:
            _downward(pod, source["downwardAPI"].get("items") or [], directory)
        else:
            kind, key = (
                ("configmaps", "configMap") if "configMap" in source else ("secrets", "secret")
            )
            if key not in source:
                raise ConfigError(f"projected source {sorted(source)} is not supported")
            obj = fetch(kind, namespace, source[key]["name"])
            if obj is None and not source[key].get("optional"):
                raise ConfigError(f"{kind[:-1]} {source[key]['name']!r} not found")
            data = _object_data(kind, obj) if obj else {}
            _write_items(directory, data, source[key].get("items"), mode)


def _downward(pod: Manifest, items: list[Manifest], directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for item in items:
        if "fieldRef" in item:
            (directory / item["path"]).write_text(
                field_value(pod, item["fieldRef"]["fieldPath"], None)
            )


def memory_volume_sizes(pod: Manifest) -> dict[str, int]:
    """The sizeLimit of each emptyDir in memory that has one, in bytes."""
    return {
        vol["name"]: quantity_bytes(str(vol["emptyDir"]["sizeLimit"]))
        for vol in pod["spec"].get("volumes") or []
        if (vol.get("emptyDir") or {}).get("medium") == "Memory"
        and vol["emptyDir"].get("sizeLimit")
    }


def container_mounts(
    container: Manifest,
    volumes: Mapping[str, Path | None],
    sizes: Mapping[str, int] | None = None,
) -> list[Mount]:
    mounts = []
    for m in container.get("volumeMounts") or []:
        if m["name"] not in volumes:
            raise ConfigError(f"volumeMount {m['name']!r}: no such volume")
        source = volumes[m["name"]]
        if source is not None and m.get("subPath"):
            source = source / m["subPath"]
            source.mkdir(parents=True, exist_ok=True)
        size = (sizes or {}).get(m["name"]) if source is None else None
        mounts.append(Mount(source, m["mountPath"], bool(m.get("readOnly")), size))
    return mounts


def hosts_file(entries: list[tuple[str, list[str]]]) -> str:
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    lines += [f"{addr}\t{' '.join(names)}" for addr, names in entries]
    return "\n".join(lines) + "\n"


def write_in_place(path: Path, text: str) -> None:
    """Rewrite a bind-mounted file in place (a rename would leave the mount on the old
    inode)."""
    if path.is_file() and path.read_text() == text:
        return
    with path.open("r+" if path.exists() else "w") as f:
        f.write(text)
        f.truncate()


def image_paths() -> list[Path]:
    """What stands in for the container image on the executor: this Python environment and
    the checkout it runs from (an editable install)."""
    import tradewind

    return sorted({Path(sys.prefix), Path(tradewind.__file__).resolve().parents[1]})


def init_script(
    hostname: str,
    mounts: list[Mount],
    pod_dir: Path,
    workdir: str,
    security: Security | None = None,
    image: list[Path] | None = None,
) -> str:
    """What runs first inside the pod's namespaces: hostname, mounts, a read-only root if
    asked, then exec the container's command (passed as "$@").

    Every bind source is named relative to the pod's folder, the working directory while
    mounting (`mount -c` keeps the name as given): a volume mounted over one of that folder's
    parents (an emptyDir on /tmp) hides none of the sources after it. A source elsewhere (a
    hostPath) is first bound into the folder, before anything is mounted over it. So are the
    `image` paths (default `image_paths()`) that a volume would hide (a checkout under /tmp
    and an emptyDir on /tmp): they are bound back over the volume, as an image's own files
    would stay visible."""
    q = shlex.quote
    security = security or Security()
    targets = [Path(m.target) for m in mounts]
    hidden = [
        p for p in (image_paths() if image is None else image)
        if any(p.is_relative_to(t) for t in targets)
    ]  # fmt: skip
    lines = ["set -e", f"hostname {q(hostname)}", "mount --make-rprivate /"]
    lines.append("mount -t proc proc /proc")  # this PID namespace's processes
    lines.append(f"cd {q(str(pod_dir))}")
    sources: list[str | None] = []
    for i, m in enumerate(mounts):
        if m.source is None or m.source.is_relative_to(pod_dir):
            sources.append(None if m.source is None else str(m.source.relative_to(pod_dir)))
            continue
        stage, src = f"host-paths/{i}", q(str(m.source))
        lines.append(f"if [ -d {src} ]; then mkdir -p {stage}; else mkdir -p host-paths; "
                     f"touch {stage}; fi")  # fmt: skip
        lines.append(f"mount -c --bind {src} {stage}")
        sources.append(stage)
    for i, path in enumerate(hidden):
        lines.append(f"mkdir -p image-paths/{i}")
        lines.append(f"mount -c --bind {q(str(path))} image-paths/{i}")
    # The pod's own /etc/hosts and /etc/resolv.conf (no nameserver: names are in hosts).
    lines += [
        "mount -c --bind etc-hosts /etc/hosts",
        "mount -c --bind resolv.conf /etc/resolv.conf",
    ]
    if not security.read_only_root:
        # The container's own writable /var/tmp, before the volumes: one may be in it.
        lines.append("mount -c --bind var-tmp /var/tmp")
    # A volume's mount point may be inside another's: parents first.
    for source, m in sorted(zip(sources, mounts, strict=True), key=lambda p: _depth(p[1].target)):
        lines.append(f"mkdir -p {q(m.target)}")
        if source is None:
            size = f",size={m.size}" if m.size else ""
            lines.append(f"mount -t tmpfs -o mode=1777{size} tmpfs {q(m.target)}")
        else:
            ro = " -o ro" if m.read_only else ""
            lines.append(f"mount -c --bind{ro} {q(source)} {q(m.target)}")
    for i, path in enumerate(hidden):
        lines.append(f"mkdir -p {q(str(path))}")
        lines.append(f"mount -c --bind image-paths/{i} {q(str(path))}")
    if security.read_only_root:  # this namespace's view of /, not the host's
        lines.append("mount -o remount,bind,ro /")
    lines.append(f"cd {q(workdir)}")
    lines.append('exec setpriv --no-new-privs -- "$@"' if security.no_new_privs else 'exec "$@"')
    return "\n".join(lines) + "\n"


def _depth(path: str) -> int:
    return len([part for part in path.split("/") if part])


@dataclass
class Container:
    """One started container: its process (the `ip netns exec` -> `unshare` chain, whose
    first child in the new PID namespace is the container's command) and its cgroup."""

    proc: subprocess.Popen[bytes]
    cgroup: Path | None
    started_at: float = field(default_factory=time.time)

    def poll(self) -> int | None:
        return self.proc.poll()

    def init_pid(self) -> int | None:
        """The container's PID 1 (the shim's child), as seen from here."""
        try:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        except OSError:
            return None
        return int(children.split()[0]) if children.split() else None

    def terminate(self) -> None:
        """SIGTERM to the container's PID 1, as a kubelet stops a container."""
        pid = self.init_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL every process of the container (its cgroup and its session)."""
        pids: set[int] = set()
        if self.cgroup is not None:
            with contextlib.suppress(OSError):
                pids |= {int(p) for p in (self.cgroup / "cgroup.procs").read_text().split()}
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def oom_killed(self) -> bool:
        if self.cgroup is None:
            return False
        try:
            control = (self.cgroup / "memory.oom_control").read_text()
        except OSError:
            return False
        counts = dict(line.split() for line in control.splitlines() if line.strip())
        return int(counts.get("oom_kill", "0")) > 0

    def release(self) -> None:
        if self.cgroup is not None:
            with contextlib.suppress(OSError):
                self.cgroup.rmdir()


def exit_code(returncode: int) -> int:
    """A shell-style exit code: 128 + the signal for a process killed by one."""
    return 128 - returncode if returncode < 0 else returncode


def make_cgroup(prefix: str, uid: str, container: Manifest) -> Path | None:
    if not (CGROUP_ROOT / "cgroup.procs").is_file():
        return None
    path = CGROUP_ROOT / f"tradewind-{prefix}" / f"{uid}-{container['name']}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        limit = ((container.get("resources") or {}).get("limits") or {}).get("memory")
        if limit:
            (path / "memory.limit_in_bytes").write_text(str(quantity_bytes(str(limit))))
    except OSError:
        return None
    return path


def start_container(
    *,
    netns: str,
    hostname: str,
    command: list[str],
    env: Mapping[str, str],
    mounts: list[Mount],
    pod_dir: Path,
    workdir: str,
    log_path: Path,
    cgroup: Path | None,
    security: Security | None = None,
) -> Container:
    script = pod_dir / "init.sh"
    script.write_text(init_script(hostname, mounts, pod_dir, workdir, security))
    (pod_dir / "var-tmp").mkdir(exist_ok=True)
    (pod_dir / "var-tmp").chmod(0o1777)
    shim = [sys.executable, "-m", "tradewind.devstack.executor_shim"]
    argv = ["ip", "netns", "exec", netns, *shim, str(script), *command]
    procs = None if cgroup is None else str(cgroup / "cgroup.procs")

    def join_cgroup() -> None:
        if procs is not None:
            with open(procs, "w") as f:
                f.write(str(os.getpid()))

    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env),
            start_new_session=True,
            preexec_fn=join_cgroup if procs is not None else None,
        )
    return Container(proc, cgroup)
