"""`doomnet report`, `reproduce` and `compare` end to end: a real grid sweep (digits, seeds 0
and 1) run with train.py in a temp copy of the project, a real Optuna journal study with
complete, pruned and failed trials, and the commands run as a user runs them."""

from __future__ import annotations

import base64
import csv
import io
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow

# Two-sided 95% Student-t quantiles, t(0.975, n - 1), from a table.
T975 = {2: 12.706204736174707, 3: 4.302652729749464}
GRID = ["lr=0.02,0.5", "hidden=16,32", "seed=0,1"]
FIGURES = {
    "configurations.png",
    "learning_curves.png",
    "objective_vs_params.png",
    "parallel_coordinates.png",
}


def env() -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    out["HYDRA_FULL_ERROR"] = "0"
    return out


def doomnet(
    project: Path, *args: str, cwd: Path | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """`python -m doomnet ARGS --project PROJECT`, from inside the project (or `cwd`)."""
    return subprocess.run(
        [sys.executable, "-m", "doomnet", *args, "--project", str(project)],
        cwd=cwd or project,
        env=env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def client_for(project: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")


def runs_of(project: Path, experiment: str = "doomnet") -> list:
    client = client_for(project)
    found = client.get_experiment_by_name(experiment)
    return list(client.search_runs([found.experiment_id], max_results=1000))


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def assert_png_has_content(path: Path) -> None:
    """The file decodes as a PNG of a real size, and is not blank: its pixels vary and a
    fair share of them is ink."""
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.verify()
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("L"), dtype=np.float64)
    assert pixels.shape[0] >= 200 and pixels.shape[1] >= 500, (path.name, pixels.shape)
    assert pixels.std() > 15, f"{path.name} looks blank (pixel std {pixels.std():.1f})"
    ink = float((pixels < 160).mean())
    assert 0.01 < ink < 0.5, f"{path.name}: {ink:.3f} of the pixels are dark"


def one_error_line(done: subprocess.CompletedProcess) -> str:
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


DIGITS = ["data=digits", "init=he", "batch_size=64", "iterations=40", "eval_every=5"]


def multirun_in_copy(project: Path, *args: str) -> None:
    """Copy the runnable project (train.py + conf/) into `project` and run
    `train.py -m ARGS` on digits there (small and fast: 40 mini-batch iterations)."""
    shutil.copy(REPO / "train.py", project / "train.py")
    shutil.copytree(REPO / "conf", project / "conf")
    done = subprocess.run(
        [sys.executable, "train.py", "-m", *DIGITS, "progress=none", *args],
        cwd=project,
        env=env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project after `train.py -m` over lr x hidden x seed (8 runs on digits)."""
    project = tmp_path_factory.mktemp("sweep")
    multirun_in_copy(project, *GRID)
    return project


def children(project: Path) -> list:
    return [r for r in runs_of(project) if "mlflow.parentRunId" in r.data.tags]


def test_report_of_a_seeded_grid_has_every_file_and_one_row_per_run(sweep: Path) -> None:
    done = doomnet(sweep, "report", "doomnet")
    assert done.returncode == 0, done.stderr
    folder = sweep / "reports" / "doomnet"
    assert f"{folder}/report.html" in done.stdout and "8 runs: 8 finished" in done.stdout

    files = {p.name for p in folder.iterdir()}
    assert files == {"report.md", "report.html", "runs.csv", "configurations.csv"} | FIGURES
    for name in FIGURES:
        assert_png_has_content(folder / name)

    runs = children(sweep)
    rows = read_csv(folder / "runs.csv")
    assert sorted(r["run_id"] for r in rows) == sorted(r.info.run_id for r in runs)
    by_id = {r.info.run_id: r for r in runs}
    for row in rows:
        run = by_id[row["run_id"]]
        assert row["state"] == "FINISHED"
        assert float(row["val/final_acc"]) == run.data.metrics["val/final_acc"]
        assert (row["lr"], row["hidden"], row["seed"]) == (
            run.data.params["lr"],
            run.data.params["hidden"],
            run.data.params["seed"],
        )
        assert float(row["duration_s"]) > 0

    md = (folder / "report.md").read_text()
    for heading in (
        "## Summary",
        "## Method",
        "## Configurations (seed replicates aggregated)",
        "## Top 5 runs",
        "## Learning curves",
        "## Objective against each swept parameter",
        "## Parallel coordinates",
        "## Provenance",
        "## Re-running the top configurations",
    ):
        assert heading in md
    for name in FIGURES:
        assert f"]({name})" in md
    assert "8 training runs: 8 finished." in md
    assert "Swept: `hidden`, `lr`;" in md  # lr spans 25x: not a log axis
    assert "an exhaustive grid" in md and "seeds 0, 1" in md
    tags = runs[0].data.tags
    assert tags["data.checksum"] in md and tags["version.numpy"] in md
    assert tags["blas.library"] in md and "lock.sha256" not in md  # no uv.lock in the copy


def test_report_html_is_self_contained(sweep: Path) -> None:
    out = sweep / "reports" / "html_check"
    assert doomnet(sweep, "report", "doomnet", "--out", str(out)).returncode == 0
    page = (out / "report.html").read_text()
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == len(FIGURES)
    embedded = {base64.b64decode(s.split(",", 1)[1]) for s in sources}
    assert embedded == {(out / name).read_bytes() for name in FIGURES}
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.search(r'(href|src)="https?:', page) and "<script" not in page


def test_seed_aggregation_matches_a_hand_computation(sweep: Path) -> None:
    out = sweep / "reports" / "aggregation"
    assert doomnet(sweep, "report", "doomnet", "--out", str(out)).returncode == 0
    replicates = defaultdict(list)
    for run in children(sweep):
        p = run.data.params
        replicates[(float(p["lr"]), int(p["hidden"]))].append(run.data.metrics["val/final_acc"])

    rows = read_csv(out / "configurations.csv")
    assert len(rows) == 4
    for row in rows:
        values = replicates[(float(row["lr"]), int(row["hidden"]))]
        assert len(values) == 2 and row["n"] == "2" and row["seeds"] == "0,1"
        mean = sum(values) / 2
        sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (2 - 1))
        half = T975[2] * sd / math.sqrt(2)
        assert float(row["mean"]) == pytest.approx(mean, abs=1e-12)
        assert float(row["std"]) == pytest.approx(sd, abs=1e-12)
        assert float(row["ci_low"]) == pytest.approx(mean - half, abs=1e-9)
        assert float(row["ci_high"]) == pytest.approx(mean + half, abs=1e-9)
    means = [statistics.fmean(replicates[(float(r["lr"]), int(r["hidden"]))]) for r in rows]
    assert means == sorted(means, reverse=True)  # ranked on the mean
    assert [r["rank"] for r in rows] == ["1", "2", "3", "4"]

    best = rows[0]
    md = (out / "report.md").read_text()
    command = next(line for line in md.splitlines() if line.startswith("uv run train.py"))
    assert command.startswith("uv run train.py -m ") and command.endswith("seed=0,1")
    assert f"lr={float(best['lr']):g}" in command
    assert f"hidden={best['hidden']}" in command and "tracking." not in command


def test_report_of_a_parent_run_id_covers_exactly_its_children(sweep: Path) -> None:
    parent = next(r for r in runs_of(sweep) if r.data.tags.get("doomnet.kind") == "sweep")
    out = sweep / "reports" / "by_parent"
    done = doomnet(sweep, "report", parent.info.run_id, "--out", str(out))
    assert done.returncode == 0, done.stderr
    rows = read_csv(out / "runs.csv")
    assert sorted(r["run_id"] for r in rows) == sorted(r.info.run_id for r in children(sweep))


def test_reproduce_a_finished_run_is_identical_and_linked(sweep: Path) -> None:
    original = sorted(children(sweep), key=lambda r: r.info.run_id)[0]
    before = {r.info.run_id for r in runs_of(sweep)}
    done = doomnet(sweep, "reproduce", original.info.run_id[:8])
    assert done.returncode == 0, done.stdout + done.stderr
    verdict = done.stdout.strip().splitlines()[-1]
    assert verdict.startswith("identical:"), verdict

    new = [r for r in runs_of(sweep) if r.info.run_id not in before]
    assert len(new) == 1
    rerun = new[0]
    assert rerun.data.tags["doomnet.reproduces"] == original.info.run_id
    assert rerun.data.tags["doomnet.reproduce.result"].startswith("identical")
    assert "mlflow.parentRunId" not in rerun.data.tags
    assert rerun.info.experiment_id == original.info.experiment_id
    assert rerun.data.params == original.data.params
    for key in ("val/final_acc", "test/loss", "steps"):
        assert rerun.data.metrics[key] == original.data.metrics[key]

    # a later report of the experiment leaves the re-run out
    out = sweep / "reports" / "after_rerun"
    assert doomnet(sweep, "report", "doomnet", "--out", str(out)).returncode == 0
    assert len(read_csv(out / "runs.csv")) == 8
    assert "1 `doomnet reproduce` re-run left out" in (out / "report.md").read_text()


def test_reproduce_names_the_tensor_whose_stored_weights_were_altered(sweep: Path) -> None:
    original = sorted(children(sweep), key=lambda r: r.info.run_id)[1]
    run_id = original.info.run_id
    weights = (
        sweep / "mlruns" / "artifacts" / "doomnet" / run_id / "artifacts" / "model" / "weights.npz"
    )
    with np.load(weights) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["b2"] = arrays["b2"].copy()
    arrays["b2"][3] += np.float32(0.25)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    weights.write_bytes(buffer.getvalue())

    done = doomnet(sweep, "reproduce", run_id)
    assert done.returncode == 1, done.stdout + done.stderr
    verdict = done.stdout.strip().splitlines()[-1]
    assert verdict.startswith("differs: tensor b2: 1 of 10 values differ, max |Δ| 0.25 (at [3]")


def test_reproduce_refuses_when_the_data_checksum_differs(sweep: Path) -> None:
    original = sorted(children(sweep), key=lambda r: r.info.run_id)[2]
    client_for(sweep).set_tag(original.info.run_id, "data.checksum", "sha256:" + "0" * 64)
    before = len(runs_of(sweep))
    done = doomnet(sweep, "reproduce", original.info.run_id)
    assert done.returncode == 2
    line = one_error_line(done)
    assert "data checksum mismatch for digits" in line and "not re-running" in line
    assert len(runs_of(sweep)) == before


def test_compare_prints_differing_params_first_and_writes_the_curves(sweep: Path) -> None:
    runs = sorted(children(sweep), key=lambda r: r.info.run_id)
    a, b = runs[3], runs[4]
    out = sweep / "figures" / "ab.png"
    done = doomnet(sweep, "compare", a.info.run_id, b.info.run_id[:10], "--out", str(out))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split()[1:] == [a.info.run_id[:8], b.info.run_id[:8]]
    differ = [k for k in a.data.params if a.data.params[k] != b.data.params[k]]
    marked = [line.split()[1] for line in lines if line.startswith("* ")]
    assert sorted(marked) == sorted(differ) and differ
    first_metric = lines.index("final metrics:")
    assert all(
        lines.index(next(x for x in lines if x.startswith(f"* {k} "))) < first_metric
        for k in differ
    )
    val_line = next(line for line in lines if line.startswith("  val/final_acc"))
    assert f"{a.data.metrics['val/final_acc']:.4f}" in val_line
    assert f"{b.data.metrics['val/final_acc']:.4f}" in val_line
    assert lines[-1] == f"curves: {out}"
    assert_png_has_content(out)


def test_a_failed_regeneration_leaves_the_previous_report_untouched(
    sweep: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from doomnet import plots, report
    from doomnet.tracking import Store

    store = Store(f"sqlite:///{sweep / 'mlruns' / 'mlflow.db'}")
    out = tmp_path / "reports" / "doomnet"
    report.write_report(report.resolve(store, "doomnet"), out)
    good = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken(*args, **kwargs):
        raise RuntimeError("figure failed")

    monkeypatch.setattr(plots, "parallel_coordinates", broken)
    with pytest.raises(RuntimeError, match="figure failed"):
        report.write_report(report.resolve(store, "doomnet"), out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == good
    assert [p.name for p in out.parent.iterdir()] == ["doomnet"]  # no temp folder left

    monkeypatch.undo()
    (out / "stale.txt").write_text("from the previous report")
    report.write_report(report.resolve(store, "doomnet"), out)
    assert {p.name for p in out.iterdir()} == set(good)  # replaced whole, not merged
    assert [p.name for p in out.parent.iterdir()] == ["doomnet"]


def test_report_refuses_to_replace_a_folder_that_is_not_a_report(sweep: Path) -> None:
    notes = sweep / "notes"
    notes.mkdir()
    (notes / "paper.tex").write_text("precious")
    done = doomnet(sweep, "report", "doomnet", "--out", str(notes))
    assert done.returncode == 2
    assert "is not a doomnet report" in one_error_line(done)
    assert [p.name for p in notes.iterdir()] == ["paper.tex"]


@pytest.fixture
def bare(tmp_path: Path, sweep: Path) -> Path:
    """A project folder with a copy of the sweep's store and no reports/ yet."""
    shutil.copytree(sweep / "mlruns", tmp_path / "mlruns")
    client_for(tmp_path).create_experiment("empty")
    return tmp_path


@pytest.mark.parametrize(
    "args, words",
    [
        (["report", "f" * 32], "no run ffffffffffffffffffffffffffffffff in"),
        (["report", "nope"], "no experiment or run named 'nope'"),
        (["report", "{run}"], "is a training run, not a sweep's parent run"),
        (["report", "doomnet", "--top", "0"], "--top must be >= 1"),
        (["report", "empty"], "experiment 'empty' has no training runs"),
        (["report", "--study", "lr_hidden"], "no Optuna journal at"),
        (["report", "doomnet", "--tracking-uri", "sqlite:///{tmp}/missing.db"], "no MLflow store"),
        (["report", "doomnet", "--tracking-uri", "sqlite:///{tmp}/garbage.db"], "cannot open"),
        (["reproduce", "0" * 32], "no run 00000000000000000000000000000000"),
        (["reproduce", "xyz"], "'xyz' is not a run id"),
        (["compare", "{run}", "abcdef0123"], "no run abcdef0123..."),
        (["compare", "{run}"], "compare needs at least two run ids"),
    ],
)
def test_bad_input_fails_with_one_line_and_writes_nothing(
    bare: Path,
    sweep: Path,
    args: list[str],
    words: str,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In-process (`doomnet.cli.main`), for speed; the real-process test below runs two."""
    from doomnet.cli import main

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (bare / "garbage.db").write_text("this is not a database")
    run_id = children(sweep)[0].info.run_id
    args = [a.format(tmp=bare, run=run_id) for a in args]
    before = sorted(p.name for p in bare.iterdir())
    n_runs = len(runs_of(bare))
    code = main([*args, "--project", str(bare)])
    out, err = capsys.readouterr()
    assert code == 2, out + err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], err
    assert out == ""
    assert sorted(p.name for p in bare.iterdir()) == before  # no reports/, no missing.db
    assert len(runs_of(bare)) == n_runs


def test_bad_input_in_a_real_process_is_one_line_on_stderr(bare: Path) -> None:
    for args, words in [
        (["report", "nope"], "no experiment or run named 'nope'"),
        (["reproduce", "0" * 32], "no run 00000000000000000000000000000000"),
    ]:
        done = doomnet(bare, *args)
        assert done.returncode == 2 and done.stdout == ""
        assert words in one_error_line(done)
    assert not (bare / "reports").exists()


# --- an Optuna study with complete, pruned and failed trials ------------------------------------


TRIALS = [  # (lr, hidden, how it ends)
    (0.1, 16, "complete"),
    (0.5, 32, "complete"),
    (0.002, 32, "pruned"),
    (0.02, 16, "complete"),
    (0.001, 16, "pruned"),
    (0.3, 32, "raises"),
    (0.05, 32, "dies before its run"),
    (0.9, 16, "complete"),
]


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A project whose journal holds study `lr_hidden` (8 trials: 4 complete, 2 pruned, 2 failed,
    one of them without an MLflow run) and whose store holds the study's parent run and 7 runs.
    Returns (project, parent run id)."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from optuna.trial import TrialState

    from doomnet import tracking
    from doomnet.config import Config, DataConfig, TrackingConfig, validate
    from doomnet.run import Pruned, run

    project = tmp_path_factory.mktemp("study")
    uri = f"sqlite:///{project / 'mlruns' / 'mlflow.db'}"
    journal = project / "mlruns" / "optuna.journal"
    journal.parent.mkdir(parents=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(str(journal)))
    study = optuna.create_study(study_name="lr_hidden", storage=storage, direction="maximize")
    space = {
        "lr": FloatDistribution(1e-3, 1.0, log=True),
        "hidden": CategoricalDistribution([16, 32]),
    }
    tracking_cfg = TrackingConfig(uri=uri, experiment="studies")
    tags = {  # what the Optuna sweeper records on a study's parent run
        "sweep.sweeper": "optuna",
        "optuna.study": "lr_hidden",
        "optuna.storage": "mlruns/optuna.journal",  # relative to the project
        "optuna.sampler": "TPESampler(seed=0)",
        "optuna.pruner": "MedianPruner(n_startup_trials=2)",
        "optuna.n_trials": "6",  # complete + pruned
    }
    with tracking.sweep_run(
        tracking_cfg, project_dir=project, run_name="study lr_hidden", params={}, tags=tags
    ) as parent:
        study.set_user_attr("mlflow.parent_run_id", parent.run_id)
        for lr, hidden, ending in TRIALS:
            study.enqueue_trial({"lr": lr, "hidden": hidden})
            trial = study.ask(space)
            if ending == "dies before its run":
                study.tell(trial, state=TrialState.FAIL)
                continue
            cfg = validate(
                Config(
                    lr=trial.params["lr"],
                    hidden=trial.params["hidden"],
                    init="he",
                    iterations=40,
                    batch_size=64,
                    eval_every=5,
                    progress="none",
                    data=DataConfig(name="digits"),
                    tracking=TrackingConfig(
                        uri=uri, experiment="studies", parent_run_id=parent.run_id
                    ),
                )
            )

            def stop(step: int, metrics: dict, ending: str = ending) -> None:
                if ending == "pruned" and step == 15:
                    raise Pruned(f"pruned at step {step}")
                if ending == "raises" and step == 10:
                    raise RuntimeError("boom: simulated crash")

            overrides = [f"lr={lr}", f"hidden={hidden}", "data=digits"]
            # runs name their trial by a tag, trials their run by a user attr: odd trials
            # have only the latter, so the report must read both
            link = {"optuna.trial": str(trial.number)} if trial.number % 2 == 0 else {}
            with tracking.linked_runs(link) as created:
                try:
                    value = run(cfg, overrides=overrides, project_dir=project, callbacks=(stop,))
                except Pruned:
                    state, value = TrialState.PRUNED, None
                except RuntimeError:
                    state, value = TrialState.FAIL, None
                else:
                    state = TrialState.COMPLETE
            trial.set_user_attr("mlflow.run_id", created[0])
            study.tell(trial, value, state=state)
    return project, parent.run_id


def test_report_of_a_study_counts_pruned_and_failed_trials(study: tuple[Path, str]) -> None:
    project, _ = study
    done = doomnet(project, "report", "--study", "lr_hidden")
    assert done.returncode == 0, done.stderr
    folder = project / "reports" / "lr_hidden"
    files = {p.name for p in folder.iterdir()}
    assert files == {"report.md", "report.html", "runs.csv", "configurations.csv"} | FIGURES | {
        "importances.png"
    }
    for name in FIGURES | {"importances.png"}:
        assert_png_has_content(folder / name)

    rows = read_csv(folder / "runs.csv")
    assert len(rows) == 7  # the trial that died before its run has none
    by_trial = {int(r["trial"]): r for r in rows}
    expected = {
        "complete": ("FINISHED", "COMPLETE"),
        "pruned": ("PRUNED", "PRUNED"),
        "raises": ("FAILED", "FAIL"),
    }
    for number, (lr, hidden, ending) in enumerate(TRIALS):
        if ending == "dies before its run":
            assert number not in by_trial
            continue
        row = by_trial[number]
        assert (row["state"], row["trial_state"]) == expected[ending]
        assert (float(row["lr"]), int(row["hidden"])) == (lr, hidden)
        if ending == "pruned":
            assert row["val/final_acc"] == "" and float(row["last_val_acc"]) > 0
    assert "boom: simulated crash" in by_trial[5]["reason"]

    md = (folder / "report.md").read_text()
    assert "7 training runs: 4 finished, 2 pruned, 1 failed." in md
    assert "Optuna study `lr_hidden`: 8 trials, 4 complete, 2 pruned, 2 fail." in md
    assert "Optuna's `TPESampler(seed=0)` with a budget of 6 complete or pruned trials" in md
    assert "stopped by Optuna's `MedianPruner(n_startup_trials=2)`" in md
    assert "(2 pruned runs)" in md and "Each configuration ran once" in md
    assert "lr log-uniform on [0.001, 1]" in md and "hidden ∈ {16, 32}" in md
    assert "the 2 pruned runs in faint grey" in md
    assert "Swept: `hidden`, `lr` (log);" in md  # log from the study's distribution
    assert "## Runs that did not finish" in md
    assert re.search(r"\| FAILED \| RuntimeError: boom: simulated crash", md)
    configs = read_csv(folder / "configurations.csv")
    assert len(configs) == 4 and all(c["n"] == "1" for c in configs)  # pruned/failed excluded
    importance = md.split("## Parameter importances (fANOVA)")[1].split("##")[0]
    assert "`lr`" in importance and "`hidden`" in importance


def test_report_of_a_study_parent_run_finds_the_study(study: tuple[Path, str]) -> None:
    project, parent_id = study
    out = project / "reports" / "by_parent"
    # from another folder: the parent run records the journal relative to the project
    done = doomnet(project, "report", parent_id, "--out", str(out), cwd=project.parent)
    assert done.returncode == 0, done.stderr
    assert (out / "importances.png").is_file()
    assert "8 trials, 4 complete, 2 pruned, 2 fail" in (out / "report.md").read_text()


def test_reproduce_refuses_a_pruned_run(study: tuple[Path, str]) -> None:
    project, _ = study
    pruned = next(r for r in runs_of(project, "studies") if r.data.tags.get("optuna.state"))
    done = doomnet(project, "reproduce", pruned.info.run_id)
    assert done.returncode == 2
    assert "ended PRUNED: only FINISHED runs" in one_error_line(done)


def test_report_of_a_study_run_by_the_optuna_sweeper(tmp_path: Path) -> None:
    """The real thing: `train.py -m hydra/sweeper=optuna ...`, then `doomnet report --study`;
    every trial's state in the journal is the state the report gives its run."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    multirun_in_copy(
        tmp_path,
        "hydra/sweeper=optuna",
        "hydra.sweeper.study_name=real",
        "hydra.sweeper.n_trials=8",
        "hydra.sweeper.seed=0",
        "hydra.sweeper.pruner={name: median, n_startup_trials: 2, n_warmup_steps: 5}",
        "lr=tag(log, interval(1e-3, 1))",
        "hidden=choice(16, 32)",
    )

    report = doomnet(tmp_path, "report", "--study", "real")
    assert report.returncode == 0, report.stderr
    folder = tmp_path / "reports" / "real"
    assert {"importances.png", "learning_curves.png", "runs.csv"} <= {
        p.name for p in folder.iterdir()
    }
    storage = JournalStorage(JournalFileBackend(str(tmp_path / "mlruns" / "optuna.journal")))
    trials = optuna.load_study(study_name="real", storage=storage).get_trials()
    rows = read_csv(folder / "runs.csv")
    assert len(rows) == len(children(tmp_path)) == len(trials)
    states = {int(r["trial"]): r["trial_state"] for r in rows}
    assert states == {t.number: t.state.name for t in trials}
    for row in rows:
        expected = {"COMPLETE": "FINISHED", "PRUNED": "PRUNED"}[row["trial_state"]]
        assert row["state"] == expected
    counts = {s: sum(t.state.name == s for t in trials) for s in ("COMPLETE", "PRUNED")}
    md = (folder / "report.md").read_text()
    listed = ", ".join(f"{n} {s.lower()}" for s, n in counts.items() if n)
    assert f"Optuna study `real`: {len(trials)} trials, {listed}." in md
    assert "Optuna's `TPESampler" in md
    assert "stopped by Optuna's `MedianPruner(n_startup_trials=2, n_warmup_steps=5)`" in md
