"""The pieces of `doomnet report` and `doomnet reproduce` that need no training run: seed
aggregation, log-axis inference, re-run commands, the first-difference finders, environment
warnings, the Markdown/HTML renderer, the atomic swap and the read-only store."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from doomnet.analysis import aggregate_seeds, log_params, swept_params
from doomnet.markup import Doc
from doomnet.method import rerun_command
from doomnet.report import _exchange
from doomnet.reproduce import (
    environment_warnings,
    first_metric_difference,
    first_tensor_difference,
)
from doomnet.tracking import Store, StoreError, looks_like_run_id

PARAMS = ["lr", "hidden", "seed"]


def frame(rows: list[tuple]) -> pd.DataFrame:
    """Runs as report.runs_frame lays them out: (run_id, state, lr, hidden, seed, objective)."""
    records = [
        {
            "run_id": run_id,
            "state": state,
            "lr": lr,
            "hidden": hidden,
            "seed": seed,
            "val/final_acc": value,
            "test/acc": value - 0.01 if not math.isnan(value) else value,
            "started": f"2026-01-01 00:00:{i:02d}",
        }
        for i, (run_id, state, lr, hidden, seed, value) in enumerate(rows)
    ]
    return pd.DataFrame(records)


def test_seed_replicates_are_aggregated_by_hand_and_ranked_on_the_mean() -> None:
    runs = frame(
        [
            ("a0", "FINISHED", 0.1, 20, 0, 0.80),
            ("a1", "FINISHED", 0.1, 20, 1, 0.90),
            ("a2", "FINISHED", 0.1, 20, 2, 0.85),
            ("a3", "FAILED", 0.1, 20, 3, math.nan),  # no objective: left out
            ("c0", "FINISHED", 1.0, 20, 0, 0.99),  # the best single run...
            ("c1", "FINISHED", 1.0, 20, 1, 0.50),  # ...of the worse configuration
            ("c2", "PRUNED", 1.0, 20, 2, math.nan),
            ("d0", "FINISHED", 0.1, 64, 0, 0.70),
        ]
    )
    configs = aggregate_seeds(runs, PARAMS)
    assert list(configs["rank"]) == [1, 2, 3]
    a, c, d = (configs.iloc[i] for i in range(3))
    assert (a["lr"], a["hidden"], a["n"], a["seeds"]) == (0.1, 20, 3, "0,1,2")
    assert a["mean"] == pytest.approx(0.85, abs=1e-15)
    assert a["std"] == pytest.approx(0.05, abs=1e-15)  # sqrt((0.05² + 0.05² + 0) / 2)
    half = 4.302652729749464 * 0.05 / math.sqrt(3)  # t(0.975, 2) from a table
    assert (a["ci_low"], a["ci_high"]) == pytest.approx((0.85 - half, 0.85 + half), abs=1e-12)
    assert a["test_acc_mean"] == pytest.approx(0.84, abs=1e-12)
    assert sorted(a["run_ids"].split()) == ["a0", "a1", "a2"] and a["best_run_id"] == "a1"

    assert (c["lr"], c["n"], c["best_run_id"]) == (1.0, 2, "c0")
    assert c["mean"] == pytest.approx(0.745)
    half = 12.706204736174707 * c["std"] / math.sqrt(2)
    assert c["std"] == pytest.approx(math.sqrt(2 * 0.245**2))
    assert c["ci_high"] - c["mean"] == pytest.approx(half)

    assert (d["hidden"], d["n"], d["mean"]) == (64, 1, 0.70)
    assert math.isnan(d["std"]) and math.isnan(d["ci_low"]) and math.isnan(d["ci_high"])


def test_no_finished_run_gives_no_configurations() -> None:
    runs = frame([("p", "PRUNED", 0.1, 20, 0, math.nan), ("f", "FAILED", 1, 20, 0, math.nan)])
    assert aggregate_seeds(runs, PARAMS).empty


def test_swept_params_exclude_the_seed_and_constants() -> None:
    runs = frame([("a", "FINISHED", 0.1, 20, 0, 0.5), ("b", "FINISHED", 0.2, 20, 1, 0.6)])
    assert swept_params(runs, PARAMS) == ["lr"]


@pytest.mark.parametrize(
    "values, logged",
    [
        ([1e-3, 1e-2, 0.5], True),  # 500x: two decades and more
        ([0.01, 1.0], True),  # exactly two decades
        ([0.05, 0.2], False),
        ([16, 64, 128], False),
        ([0.0, 1.0], False),  # zero cannot go on a log axis
        (["normal", "he"], False),
    ],
)
def test_log_axis_when_a_parameter_spans_two_decades(values: list, logged: bool) -> None:
    runs = pd.DataFrame({"p": values})
    assert log_params(runs, ["p"]) == ({"p"} if logged else set())


def test_log_axis_when_the_study_searched_on_a_log_scale() -> None:
    import optuna
    from optuna.distributions import FloatDistribution

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study()
    for lr in (0.1, 0.2):
        study.add_trial(
            optuna.trial.create_trial(
                params={"lr": lr},
                distributions={"lr": FloatDistribution(0.05, 0.5, log=True)},
                value=lr,
            )
        )
    runs = pd.DataFrame({"lr": [0.1, 0.2]})
    assert log_params(runs, ["lr"], study) == {"lr"}
    assert log_params(runs, ["lr"]) == set()


def test_rerun_command_keeps_what_the_user_typed_and_runs_every_seed() -> None:
    overrides = [
        "data=digits",
        "lr=0.5",
        "hidden=[64,32]",
        "seed=1",
        "tracking.parent_run_id=abc",
        'tracking.run_name="lr=0.5"',
        "trial.number=3",
        "progress=none",
    ]
    command = rerun_command(overrides, {}, ["0", "1", "2"])
    assert command == "uv run train.py -m data=digits lr=0.5 'hidden=[64,32]' seed=0,1,2"
    assert rerun_command(overrides, {}, ["4"]) == (
        "uv run train.py data=digits lr=0.5 'hidden=[64,32]' seed=4"
    )


def test_rerun_command_spells_out_the_config_when_no_overrides_were_stored() -> None:
    params = {
        "lr": np.float64(0.012345678901234),
        "data.name": "digits",
        "data.root": None,
        "optimizer.name": "adam",
        "optimizer.nesterov": "False",
        "batch_size": math.nan,  # None in a pandas column
        "seed": 3,
    }
    command = rerun_command(None, params, ["3"])
    assert command == (
        "uv run train.py lr=0.012345678901234 data=digits data.root=null optimizer=adam "
        "optimizer.nesterov=false batch_size=null seed=3"
    )


def weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "W1": rng.standard_normal((4, 3)).astype(np.float32),
        "b1": np.zeros(3, np.float32),
        "W2": rng.standard_normal((3, 2)).astype(np.float32),
        "b2": np.zeros(2, np.float32),
    }


def test_identical_weights_have_no_difference() -> None:
    assert first_tensor_difference(weights(), weights()) is None


def test_the_first_differing_tensor_is_named_with_its_largest_difference() -> None:
    new = weights()
    new["W2"][1, 0] += np.float32(0.5)
    new["W2"][2, 1] += np.float32(0.125)
    new["b2"][0] = 1.0  # later tensors are not reported
    found = first_tensor_difference(weights(), new)
    assert found.startswith("tensor W2: 2 of 6 values differ, max |Δ| 0.5 (at [1, 0]: ")


def test_a_single_ulp_counts_as_a_difference_unless_tolerated() -> None:
    new = weights()
    new["b1"][2] = np.nextafter(np.float32(0), np.float32(1))
    assert first_tensor_difference(weights(), new).startswith("tensor b1: 1 of 3 values differ")
    assert first_tensor_difference(weights(), new, atol=1e-6) is None


def test_shape_dtype_and_missing_tensors_are_differences() -> None:
    new = weights()
    new["W1"] = new["W1"].astype(np.float64)
    assert "float32[4, 3] (original) vs float64[4, 3]" in first_tensor_difference(weights(), new)
    new = weights()
    del new["b2"]
    assert first_tensor_difference(weights(), new) == "tensor b2: missing from the re-run's weights"
    new = {**weights(), "W3": np.ones((2, 2), np.float32)}
    assert first_tensor_difference(weights(), new) == "tensor W3: only in the re-run's weights"


def test_metrics_are_compared_objective_first_and_time_is_ignored() -> None:
    original = {"time/train_s": 1.0, "test/loss": 0.3, "val/final_acc": 0.9, "steps": 40.0}
    same = {**original, "time/train_s": 7.5}
    assert first_metric_difference(original, same) is None
    worse = {**same, "test/loss": 0.31, "val/final_acc": 0.8}
    found = first_metric_difference(original, worse)
    assert found.startswith("metric val/final_acc: 0.90000000000000002 (original) vs 0.8")
    assert found.endswith("|Δ| 0.1")
    assert first_metric_difference(original, {**same, "steps": 39.0}).startswith("metric steps")
    assert "missing" in first_metric_difference(original, {"val/final_acc": 0.9})


def test_environment_differences_are_warned_about() -> None:
    original = {
        "version.numpy": "2.4.6",
        "blas.threads": "2",
        "blas.library": "openblas 0.3.31",
        "python": "3.11.7",
        "git.commit": "a" * 40,
        "git.dirty": "False",
    }
    assert environment_warnings(original, dict(original)) == []
    now = {**original, "blas.threads": "8", "version.numpy": "2.5.0", "git.commit": "b" * 40}
    warnings = environment_warnings(original, now)
    assert len(warnings) == 3
    assert warnings[0].startswith("version.numpy is 2.5.0 here but was 2.4.6")
    assert warnings[1].startswith("blas.threads is 8 here but was 2")
    assert warnings[2] == "the code is at commit bbbbbbbbbbbb, the original ran at aaaaaaaaaaaa"
    assert environment_warnings({**original, "git.dirty": "True"}, dict(original)) == [
        "the original run had uncommitted changes: its exact code is unknown"
    ]
    code = {**original, "code.sha256": "sha256:1"}
    assert environment_warnings(code, {**code, "code.sha256": "sha256:2"}) == [
        "the training code (doomnet's model, optim, fit, data, run, config) differs from the "
        "original run's (code.sha256): results may differ"
    ]
    assert environment_warnings(original, {**original, "code.sha256": "sha256:2"}) == []


def test_markdown_and_html_render_the_same_blocks_safely(tmp_path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (4, 3), (255, 0, 0)).save(tmp_path / "fig.png")
    doc = Doc()
    doc.h(1, "Report <b>")
    doc.p("a `x<y` and **bold** & more")
    doc.table(["k", "v|w"], [["`lr`", "0.1|0.2"]])
    doc.image("fig.png", "a caption")
    doc.code("uv run train.py 'hidden=[64,32]'")
    md = doc.markdown("<!-- marker -->")
    assert md.startswith("<!-- marker -->\n\n# Report <b>\n")
    assert "| k | v\\|w |" in md and "| `lr` | 0.1\\|0.2 |" in md
    assert "![fig](fig.png)\n\n*a caption*" in md
    page = doc.html(tmp_path, "t")
    assert "<h1>Report &lt;b&gt;</h1>" in page
    assert "<code>x&lt;y</code>" in page and "<strong>bold</strong> &amp; more" in page
    assert "<pre><code>uv run train.py &#x27;hidden=[64,32]&#x27;</code></pre>" in page
    assert "data:image/png;base64,iVBOR" in page and 'src="fig.png"' not in page


def test_exchange_swaps_two_folders_atomically(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "new.txt").write_text("new")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "old.txt").write_text("old")
    if not _exchange(tmp_path / "a", tmp_path / "b"):
        pytest.skip("renameat2(RENAME_EXCHANGE) is not available here")
    assert os.listdir(tmp_path / "b") == ["new.txt"]
    assert os.listdir(tmp_path / "a") == ["old.txt"]


def test_a_store_that_does_not_exist_is_not_created(tmp_path: Path) -> None:
    db = tmp_path / "mlruns" / "mlflow.db"
    with pytest.raises(StoreError, match="no MLflow store at"):
        Store(f"sqlite:///{db}")
    assert not db.exists() and not db.parent.exists()


def test_an_empty_or_garbage_file_is_not_a_store(tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    empty.touch()
    with pytest.raises(StoreError, match="empty file, not an MLflow store"):
        Store(f"sqlite:///{empty}")
    assert empty.stat().st_size == 0
    garbage = tmp_path / "garbage.db"
    garbage.write_text("not sqlite")
    with pytest.raises(
        StoreError, match="cannot open the MLflow store at .*: file is not a database"
    ):
        Store(f"sqlite:///{garbage}")


@pytest.mark.parametrize(
    "text, ok",
    [
        ("0123456789abcdef0123456789abcdef", True),
        ("01234567", True),
        ("0123456", False),  # too short to be unambiguous
        ("0123456789ABCDEF", False),
        ("doomnet", False),
        ("0123456789abcdef0123456789abcdef0", False),
    ],
)
def test_run_ids_and_prefixes(text: str, ok: bool) -> None:
    assert looks_like_run_id(text) is ok
