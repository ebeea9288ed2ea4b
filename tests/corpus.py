"""The invalid-manifest corpus in tests/invalid/: each file starts with
`# expect: <field path>: <message fragment>` and `# family: <kind of mistake>`.

Replayed by the unit tests against the models and, in integration tests, against the real
apiserver with `kubectl apply --dry-run=server`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

INVALID_DIR = Path(__file__).parent / "invalid"
EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "examples"


@dataclass(frozen=True)
class InvalidCase:
    path: Path
    field: str
    fragment: str
    family: str
    apiserver_rejects: bool
    """False where only the operator can reject it (e.g. a Sweep's template checked against
    its kind); the header says why."""

    @property
    def name(self) -> str:
        return self.path.stem


def invalid_cases() -> list[InvalidCase]:
    cases = []
    for path in sorted(INVALID_DIR.glob("*.yaml")):
        lines = path.read_text().splitlines()
        expect = lines[0].removeprefix("# expect: ")
        field, fragment = expect.split(": ", 1)
        family = lines[1].removeprefix("# family: ")
        apiserver_rejects = not lines[2].startswith("# apiserver: accepts")
        cases.append(InvalidCase(path, field, fragment, family, apiserver_rejects))
    return cases


def example_paths() -> list[Path]:
    return sorted(EXAMPLES_DIR.glob("*.yaml"))
