from tradewind.api.status import RunStatus
from tradewind.operator.progress import fold_progress, headline


def _mlflow_run(metrics: dict[str, float]) -> dict[str, object]:
    return {
        "info": {"run_id": "r1", "experiment_id": "1"},
        "data": {"metrics": [{"key": k, "value": v} for k, v in metrics.items()], "tags": []},
    }


def test_headline_is_the_sharpe_with_its_interval_once_there_is_one() -> None:
    training = {"val_loss": 0.51234, "epoch": 3.0}
    assert headline(training) == "val_loss=0.5123"
    finished = training | {
        "backtest_sharpe": 1.234,
        "backtest_sharpe_ci_low": -0.5,
        "backtest_sharpe_ci_high": 2.9,
        "backtest_psr": 0.91,
    }
    assert headline(finished) == "sharpe=1.23 [-0.50, 2.90] psr=0.91"
    # a Sharpe without its interval is never shown alone
    assert headline(training | {"backtest_sharpe": 3.0}) == "val_loss=0.5123"


def test_status_carries_every_significance_figure() -> None:
    metrics = {"backtest_sharpe": 1.0, "backtest_sharpe_ci_low": 0.1, "backtest_psr": 0.97}
    status = fold_progress(RunStatus(), _mlflow_run(metrics), "http://mlflow", epochs=None)
    assert status.metrics == metrics
    assert status.headline_metric is None or "sharpe" not in status.headline_metric


def test_non_finite_metrics_are_left_out_of_the_status() -> None:
    metrics = {"val_loss": float("nan"), "train_loss": 0.5, "test_accuracy": float("inf")}
    status = fold_progress(RunStatus(), _mlflow_run(metrics), "http://mlflow", epochs=None)
    assert status.metrics == {"train_loss": 0.5}
    assert status.headline_metric == "train_loss=0.5"
