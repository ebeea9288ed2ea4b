import subprocess
import sys

BLOCK_AND_IMPORT = """
import sys

class _Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {BLOCKED}:
            raise ImportError(f'{name} is blocked in this interpreter')
        return None

sys.meta_path.insert(0, _Blocker())
import tradewind.api, tradewind.api.crd, tradewind.operator.main, tradewind.operator.reconcile
loaded = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY})
assert not loaded, loaded
print('ok')
"""


def _run(blocked: set[str], heavy: set[str]) -> subprocess.CompletedProcess[str]:
    code = BLOCK_AND_IMPORT.replace("{BLOCKED}", repr(blocked)).replace("{HEAVY}", repr(heavy))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)


def test_api_and_operator_import_where_torch_cannot() -> None:
    result = _run({"torch", "stable_baselines3", "gymnasium"}, {"torch", "numpy", "pandas"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_the_blocker_really_blocks() -> None:
    code = BLOCK_AND_IMPORT.replace("{BLOCKED}", "{'yaml'}").replace("{HEAVY}", "set()")
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode != 0
    assert "yaml is blocked" in result.stderr


def test_cli_help_does_not_load_torch() -> None:
    code = "import sys; from tradewind.cli import app; assert 'torch' not in sys.modules"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_sweeps_import_where_torch_cannot() -> None:
    code = BLOCK_AND_IMPORT.replace(
        "import tradewind.api,", "import tradewind.sweeps.study, tradewind.api,"
    )
    code = code.replace("{BLOCKED}", repr({"torch", "stable_baselines3", "gymnasium", "mlflow"}))
    code = code.replace("{HEAVY}", repr({"torch", "pandas", "mlflow"}))
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
