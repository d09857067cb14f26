"""RunTracker's metric writing on real stores: the SQL fast path stores exactly what MLflow's
own log_batch stores (histories, latest values, NaN and inf), and refuses a deleted run."""

from __future__ import annotations

import math

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from doomnet import tracking

# Out of order, a repeated point, NaN and inf: what the store must keep exactly.
POINTS = [
    ("train/loss", 2.3, 1000, 0),
    ("val/acc", 0.1, 1000, 0),
    ("train/loss", 1.5, 1001, 1),
    ("val/acc", 0.4, 1001, 1),
    ("train/loss", float("nan"), 1003, 3),
    ("train/loss", 1.1, 1002, 2),
    ("val/acc", 0.4, 1001, 1),  # the same point twice
    ("val/acc", float("inf"), 1002, 2),
    ("val/acc", 0.7, 1003, 3),
    ("time/train_s", 4.2, 1004, 0),
]


def _run(client: MlflowClient) -> str:
    experiment = client.get_experiment_by_name("writer")
    experiment_id = experiment.experiment_id if experiment else client.create_experiment("writer")
    return client.create_run(experiment_id).info.run_id


def _stored(client: MlflowClient, run_id: str) -> tuple[dict, dict]:
    """(histories {key: [(step, timestamp, value)]}, latest {key: value}) as MLflow reads them."""
    latest = client.get_run(run_id).data.metrics
    histories = {
        key: sorted(
            (m.step, m.timestamp, "nan" if math.isnan(m.value) else m.value)
            for m in client.get_metric_history(run_id, key)
        )
        for key in latest
    }
    return histories, {k: "nan" if math.isnan(v) else v for k, v in latest.items()}


def _check_fast_path(uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    client = MlflowClient(tracking_uri=uri)
    reference, fast = _run(client), _run(client)
    tracking.log_batch_writer(client)(reference, list(POINTS))

    through_log_batch = []
    log_batch = client.log_batch

    def counting(run_id, metrics=(), **kwargs):
        through_log_batch.extend(metrics)
        return log_batch(run_id, metrics=metrics, **kwargs)

    monkeypatch.setattr(client, "log_batch", counting)
    tracking.point_writer(client)(fast, list(POINTS))

    assert _stored(client, fast) == _stored(client, reference)
    histories, latest = _stored(client, fast)
    largest = 1.7976931348623157e308  # MLflow's stand-in for inf
    assert histories["val/acc"] == [
        (0, 1000, 0.1),
        (1, 1001, 0.4),
        (2, 1002, largest),
        (3, 1003, 0.7),
    ]
    assert latest == {"train/loss": "nan", "val/acc": 0.7, "time/train_s": 4.2}
    # Only the newest point of each key went through MLflow's ORM: the rest were inserted.
    assert sorted(m.key for m in through_log_batch) == ["time/train_s", "train/loss", "val/acc"]


def test_sql_fast_path_stores_what_log_batch_stores_sqlite(tmp_path, monkeypatch):
    _check_fast_path(f"sqlite:///{tmp_path / 'mlflow.db'}", monkeypatch)


@pytest.mark.postgres
def test_sql_fast_path_stores_what_log_batch_stores_postgres(pg_url, monkeypatch):
    _check_fast_path(pg_url, monkeypatch)


def test_points_for_a_deleted_run_are_refused_and_nothing_is_written(tmp_path):
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = _run(client)
    client.delete_run(run_id)
    with pytest.raises(MlflowException, match="deleted"):
        tracking.point_writer(client)(run_id, list(POINTS))
    client.restore_run(run_id)
    assert client.get_metric_history(run_id, "train/loss") == []


def test_points_written_twice_are_stored_once(tmp_path):
    """A point already in the store (say, logged again by a callback) is not an error."""
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = _run(client)
    write = tracking.point_writer(client)
    write(run_id, list(POINTS))
    write(run_id, list(POINTS) + [("train/loss", 0.9, 1005, 4)])
    steps = [m.step for m in client.get_metric_history(run_id, "train/loss")]
    assert sorted(steps) == [0, 1, 2, 3, 4]
    assert client.get_run(run_id).data.metrics["train/loss"] == 0.9


def test_run_tracker_keeps_every_point_of_a_long_run(tmp_path):
    """12,000 points across several flushes, as a 3,000-iteration run logs them."""
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = _run(client)
    tracker = tracking.RunTracker(client, run_id, flush_every_s=0.05)
    for step in range(3000):
        tracker(step, {"train/loss": 1.0 / (step + 1), "val/acc": step / 3000})
        tracker(step, {"train/acc": 0.5, "val/loss": 2.0})
    tracker.close("FINISHED")
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    for key in ("train/loss", "val/acc", "train/acc", "val/loss"):
        assert [m.step for m in client.get_metric_history(run_id, key)] == list(range(3000))
    assert run.data.metrics["val/acc"] == pytest.approx(2999 / 3000)


def test_a_tracking_server_gets_log_batch():
    assert tracking.point_writer(MlflowClient("http://127.0.0.1:9")).__qualname__.startswith(
        "log_batch_writer"
    )
