"""A local image registry: the CNCF distribution registry (built from
github.com/distribution/distribution/v3 by `hack/build-binaries.sh registry`) on 127.0.0.1,
with htpasswd (bcrypt) logins and its storage in one folder.

Docker talks plain HTTP to a registry on 127.0.0.0/8 without any daemon setting, so after
`docker_login` the README's install command pushes to it as it is, with
`REGISTRY=<address>/ml`.

`start` is idempotent: a registry that answers on its recorded port is kept. Its port and
password are chosen once and kept in `<dir>/registry.json`.
"""

from __future__ import annotations

import base64
import importlib
import json
import secrets
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from pydantic import BaseModel, Field

from tradewind.devstack import processes
from tradewind.devstack.processes import ManagedProcess, StackError, free_port

NAME = "registry"
NAMESPACE = "ml"
"""The path under the registry the README's `$REGISTRY` names: `<address>/ml`."""
STATE_FILE = "registry.json"
BCRYPT_COST = 10
"""The registry checks the hash on every request of a push: cost 10 is ~50 ms, not 12's ~250."""


class Registry(BaseModel):
    """One registry's settings and files: `<dir>/config.yml`, `htpasswd`, `storage/`,
    `registry.log`."""

    dir: Path = Field(description="The registry's folder (under the dev stack's folder).")
    binary: Path = Field(description="The `registry` binary (bin/current/registry).")
    port: int = Field(description="Port on 127.0.0.1.")
    user: str = Field(default="tradewind", description="The one htpasswd user.")
    password: str = Field(description="Its password (bcrypt-hashed in the htpasswd file).")
    http_secret: str = Field(
        default_factory=lambda: secrets.token_urlsafe(32),
        description="distribution signs upload state with it (random when unset, per start).",
    )
    pid: int | None = Field(default=None, description="The running registry's process group.")

    @property
    def address(self) -> str:
        """`host:port`, as docker names a registry."""
        return f"127.0.0.1:{self.port}"

    @property
    def prefix(self) -> str:
        """The README's `$REGISTRY`: where `tradewind-<target>:<version>` images go."""
        return f"{self.address}/{NAMESPACE}"


def load_or_create(directory: Path, bin_dir: Path) -> Registry:
    """The registry recorded in `directory`, or a new one (free port, random password)."""
    state = directory / STATE_FILE
    if state.is_file():
        return Registry.model_validate_json(state.read_text())
    registry = Registry(
        dir=directory,
        binary=bin_dir / "registry",
        port=free_port(),
        password=secrets.token_urlsafe(18),
    )
    _save(registry)
    return registry


def config(registry: Registry) -> str:
    """distribution's configuration (JSON is YAML): filesystem storage, htpasswd auth, and
    deletes allowed so a dev stack can clean up after itself."""
    doc = {
        "version": 0.1,
        "log": {"level": "info", "formatter": "text"},
        "storage": {
            "filesystem": {"rootdirectory": str(registry.dir / "storage")},
            "delete": {"enabled": True},
        },
        "http": {"addr": registry.address, "secret": registry.http_secret},
        "auth": {"htpasswd": {"realm": "tradewind", "path": str(registry.dir / "htpasswd")}},
    }
    return json.dumps(doc, indent=2)


def htpasswd_line(user: str, password: str) -> str:
    """`user:<bcrypt hash>`, the only hash distribution's htpasswd accepts: with Python's
    `bcrypt` when installed, else apache2-utils' `htpasswd`."""
    try:
        bcrypt = importlib.import_module("bcrypt")
    except ImportError:
        bcrypt = None
    if bcrypt is not None:
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(BCRYPT_COST)).decode()
        return f"{user}:{hashed}"
    tool = shutil.which("htpasswd")
    if tool is None:
        raise StackError("no bcrypt: install apache2-utils (htpasswd) or the bcrypt package")
    # -i: the password on stdin, never in the process list.
    out = subprocess.run(
        [tool, "-niB", "-C", str(BCRYPT_COST), user],
        input=password,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def process(registry: Registry) -> ManagedProcess:
    """The registry as a managed process; ready when `/v2/` accepts the login."""
    config_file = registry.dir / "config.yml"
    config_file.write_text(config(registry))
    config_file.chmod(0o600)
    return ManagedProcess(
        NAME,
        [str(registry.binary), "serve", str(config_file)],
        registry.dir / "registry.log",
        lambda: answers(registry),
        # distribution v3 exports OpenTelemetry traces unless told not to.
        env={"OTEL_TRACES_EXPORTER": "none"},
        ports=[registry.port],
    )


def start(registry: Registry) -> Registry:
    """Start the registry unless it already answers; returns it with its pid recorded."""
    if processes.pid_alive(registry.pid) and answers(registry):
        return registry
    processes.stop(registry.pid)
    registry.dir.mkdir(parents=True, exist_ok=True)
    (registry.dir / "storage").mkdir(exist_ok=True)
    htpasswd = registry.dir / "htpasswd"
    htpasswd.write_text(htpasswd_line(registry.user, registry.password) + "\n")
    htpasswd.chmod(0o600)
    started = registry.model_copy(update={"pid": processes.start(process(registry))})
    _save(started)
    return started


def stop(registry: Registry) -> Registry:
    """Stop the registry (its images stay in `storage/`)."""
    processes.stop(registry.pid)
    stopped = registry.model_copy(update={"pid": None})
    _save(stopped)
    return stopped


def answers(registry: Registry) -> bool:
    """True if `GET /v2/` with the login answers 200 (the registry is up and auth works)."""
    token = base64.b64encode(f"{registry.user}:{registry.password}".encode()).decode()
    request = urllib.request.Request(
        f"http://{registry.address}/v2/", headers={"Authorization": f"Basic {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def docker_login(
    registry: Registry, docker: str = "docker", config_dir: Path | None = None
) -> None:
    """`docker login` to the registry (the password on stdin). `config_dir` (DOCKER_CONFIG)
    keeps the login out of ~/.docker; the README's `docker push` needs it in the default one."""
    argv = [docker]
    if config_dir is not None:
        argv += ["--config", str(config_dir)]
    argv += ["login", registry.address, "--username", registry.user, "--password-stdin"]
    done = subprocess.run(argv, input=registry.password, capture_output=True, text=True)
    if done.returncode != 0:
        raise StackError(f"docker login {registry.address} failed: {done.stderr.strip()}")


def _save(registry: Registry) -> None:
    registry.dir.mkdir(parents=True, exist_ok=True)
    state = registry.dir / STATE_FILE
    state.write_text(registry.model_dump_json(indent=2))
    state.chmod(0o600)
