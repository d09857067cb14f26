"""The Optuna sweeper's parts, in process: search-space grammar, how a job's end maps to a trial
state, orphan detection, the job's trial handle on a real journal file, the journal lock, and
the MLflow bookkeeping on a real SQLite store. The whole app is in test_optuna_app.py."""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from doomnet.config import TrialConfig
from doomnet.fit import DivergedError
from doomnet.run import Pruned, Terminated
from doomnet.summary import JobRow, format_study
from doomnet.trial import (
    HEARTBEAT,
    JOB_PREFIX,
    PRUNER_ATTR,
    SWEEPER_PREFIX,
    OwnedSymlinkLock,
    SweepGone,
    TrialHandle,
    make_pruner,
    open_storage,
    orphan_reason,
    owner_attrs,
    process_start,
)
from hydra_plugins.doomnet_sweeper._search import (
    SearchSpace,
    describe,
    identity_difference,
    make_param,
    make_sampler,
    pruner_spec,
    sampler_spec,
)
from hydra_plugins.doomnet_sweeper._study import Flight, StudyRun, outcome, storage_label

optuna.logging.set_verbosity(optuna.logging.WARNING)


def param(line: str):
    return make_param(OverridesParser.create().parse_override(line))


def space(*lines: str) -> SearchSpace:
    params = {p.name: p for p in map(param, lines)}
    return SearchSpace(params, [])


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# --- search space ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line, distribution",
    [
        ("lr=tag(log, interval(1e-3, 1))", FloatDistribution(1e-3, 1.0, log=True)),
        ("lr=interval(0.1, 0.5)", FloatDistribution(0.1, 0.5)),
        ("iterations=int(interval(50, 500))", IntDistribution(50, 500)),
        ("hidden=tag(log, int(interval(8, 512)))", IntDistribution(8, 512, log=True)),
        ("hidden=choice(20, 64, 128)", CategoricalDistribution([20, 64, 128])),
        # Hydra's range excludes its stop: the same values the basic sweeper runs
        ("iterations=range(200, 2000, step=200)", IntDistribution(200, 1800, step=200)),
        ("init=choice(he, xavier)", CategoricalDistribution(["he", "xavier"])),
    ],
)
def test_the_sweep_grammar_maps_to_optuna_distributions(line: str, distribution) -> None:
    assert param(line).distribution == distribution


def test_choices_that_are_lists_are_sampled_as_their_override_text() -> None:
    p = param("hidden=choice([64,32], [128])")
    assert p.distribution == CategoricalDistribution(["[64,32]", "[128]"])
    assert SearchSpace({"hidden": p}, []).overrides({"hidden": "[64,32]"}) == ["hidden=[64,32]"]


def test_grid_points_and_run_names_match_the_basic_sweeper() -> None:
    s = space("lr=choice(0.05, 0.2)", "hidden=range(20, 100, 44)")
    assert s.params["hidden"].grid == [20, 64]
    assert s.grid_size() == 4
    assert s.run_name({"lr": 0.05, "hidden": 64}) == "lr=0.05 hidden=64"
    assert s.overrides({"lr": 0.2, "hidden": 20}) == ["lr=0.2", "hidden=20"]
    assert param("lr=interval(0, 1)").grid is None  # an interval has no grid


def test_sampled_floats_keep_full_precision_in_overrides_and_four_digits_in_names() -> None:
    s = space("lr=tag(log, interval(1e-5, 1))")
    assert s.overrides({"lr": 0.000123456789}) == ["lr=0.000123456789"]
    assert s.run_name({"lr": 0.000123456789}) == "lr=0.0001235"


def test_describe_writes_distributions_in_the_grammar() -> None:
    assert describe(param("lr=tag(log, interval(1e-3, 1))").distribution) == (
        "interval(0.001, 1) log"
    )
    assert describe(param("n=range(2, 10, 2)").distribution) == "interval(2, 8) step 2"
    assert describe(param("h=choice(20, 64)").distribution) == "choice(20, 64)"


def test_identity_difference_names_every_change() -> None:
    old = {**space("lr=interval(0.1, 1)", "hidden=choice(20, 64)").identity()}
    new_space = space("lr=interval(0.01, 1)", "init_std=interval(0.1, 1)")
    new_space.fixed = ["iterations=100", "progress=none"]
    new = new_space.identity()
    text = identity_difference(old, new)
    assert "lr was interval(0.1, 1), now interval(0.01, 1)" in text
    assert "hidden was searched, now is not" in text
    assert "init_std is new" in text
    assert "iterations=100" in text and "progress" not in text  # progress is not identity
    assert identity_difference(old, old) == ""


def test_samplers_by_name_get_the_seed_and_the_grid() -> None:
    s = space("lr=choice(0.05, 0.2)", "hidden=choice(20, 64)")
    tpe, spec = make_sampler(sampler_spec("tpe"), s, seed=7, n_jobs=2)
    assert isinstance(tpe, optuna.samplers.TPESampler) and spec["seed"] == 7
    assert spec["constant_liar"] is True  # parallel trials do not all pick the same point
    grid, spec = make_sampler(sampler_spec({"name": "grid"}), s, seed=0, n_jobs=1)
    assert isinstance(grid, optuna.samplers.GridSampler)
    assert spec["search_space"] == {"lr": [0.05, 0.2], "hidden": [20, 64]}
    # the official plugin's form; its own seed wins over the sweeper's
    own, spec = make_sampler(
        sampler_spec({"_target_": "optuna.samplers.RandomSampler", "seed": 3}), s, seed=0, n_jobs=1
    )
    assert isinstance(own, optuna.samplers.RandomSampler) and spec["seed"] == 3
    for name, cls in [("cmaes", "CmaEsSampler"), ("qmc", "QMCSampler")]:
        sampler, _ = make_sampler(sampler_spec(name), space("lr=interval(0, 1)"), seed=1, n_jobs=1)
        assert type(sampler).__name__ == cls


def test_sampler_settings_by_name_group_node_or_target() -> None:
    node = {"_target_": "optuna.samplers.TPESampler", "name": None, "seed": None, "popsize": None}
    assert sampler_spec(node) == {"_target_": "optuna.samplers.TPESampler"}
    # a name given on top of the default node picks the class; set keys are kept
    picked = sampler_spec({**node, "name": "random", "seed": 4})
    assert picked == {"_target_": "optuna.samplers.RandomSampler", "seed": 4}
    assert sampler_spec("qmc") == {"_target_": "optuna.samplers.QMCSampler"}
    own = {"_target_": "optuna.samplers.NSGAIISampler", "population_size": 8}
    assert sampler_spec(own) == own  # any Optuna sampler by its class


def test_unknown_sampler_and_pruner_names_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown sampler 'annealing'"):
        sampler_spec("annealing")
    with pytest.raises(ValueError, match="unknown pruner 'early'"):
        pruner_spec("early")


@pytest.mark.parametrize(
    "spec, cls",
    [
        ("median", optuna.pruners.MedianPruner),
        ({"name": "percentile", "percentile": 25.0}, optuna.pruners.PercentilePruner),
        ("successive halving", optuna.pruners.SuccessiveHalvingPruner),
        ("sha", optuna.pruners.SuccessiveHalvingPruner),
        ("hyperband", optuna.pruners.HyperbandPruner),
        (
            {"_target_": "optuna.pruners.MedianPruner", "n_warmup_steps": 3},
            optuna.pruners.MedianPruner,
        ),
        ("none", optuna.pruners.NopPruner),
    ],
)
def test_pruners_by_name_or_target(spec, cls) -> None:
    assert isinstance(make_pruner(pruner_spec(spec)), cls)


# --- how a job ended ---------------------------------------------------------------------------


def job(status: JobStatus, value) -> JobReturn:
    ret = JobReturn()
    ret.status = status
    ret.return_value = value
    return ret


@pytest.mark.parametrize(
    "result, state, words",
    [
        (job(JobStatus.COMPLETED, 0.93), "COMPLETE", ""),
        (job(JobStatus.COMPLETED, 1), "COMPLETE", ""),
        (job(JobStatus.COMPLETED, math.nan), "FAIL", "the objective is nan"),
        (job(JobStatus.COMPLETED, math.inf), "FAIL", "the objective is inf"),
        (job(JobStatus.COMPLETED, -math.inf), "FAIL", "the objective is -inf"),
        (job(JobStatus.COMPLETED, None), "FAIL", "must be a number, got None"),
        (job(JobStatus.COMPLETED, True), "FAIL", "must be a number"),
        (job(JobStatus.FAILED, DivergedError(3, math.nan, " is not finite")), "FAIL", "nan is"),
        (job(JobStatus.FAILED, Pruned("pruned at step 4")), "PRUNED", "pruned at step 4"),
        (job(JobStatus.FAILED, optuna.TrialPruned("by hand")), "PRUNED", "by hand"),
        (job(JobStatus.FAILED, Terminated("terminated by SIGTERM")), "FAIL", "SIGTERM"),
        (RuntimeError("A worker process was unexpectedly terminated"), "FAIL", "process failed"),
    ],
)
def test_outcome_of_a_job(result, state: str, words: str) -> None:
    got_state, value, reason = outcome(result)
    assert got_state == state
    assert words in reason
    assert (value is not None) == (state == "COMPLETE")


# --- owners of a running trial -----------------------------------------------------------------


def test_a_trial_is_orphaned_when_its_processes_on_this_host_are_gone() -> None:
    host = socket.gethostname()
    gone = dead_pid()
    attrs = {
        SWEEPER_PREFIX: {"host": host, "pid": gone, "pid_start": ""},
        JOB_PREFIX: {"host": host, "pid": gone, "pid_start": ""},
        HEARTBEAT: time.time(),  # a fresh heartbeat does not matter on this host
    }
    reason = orphan_reason(attrs, host=host, now=time.time(), grace_s=60)
    assert reason == f"the sweep process {gone} on {host} died while the trial was RUNNING"
    # the sweep alive, or the job alive: not orphaned
    alive_attrs = {**attrs, JOB_PREFIX: owner_attrs(JOB_PREFIX)[JOB_PREFIX]}
    assert orphan_reason(alive_attrs, host=host, now=time.time(), grace_s=60) is None
    # a job process that is alive but done with the trial (a joblib worker) holds nothing
    ended = {**attrs, JOB_PREFIX: {**alive_attrs[JOB_PREFIX], "ended": True}}
    assert "died" in orphan_reason(ended, host=host, now=time.time(), grace_s=60)
    # a reused pid (same number, another start time) is not the owner
    me = os.getpid()
    reused = {SWEEPER_PREFIX: {"host": host, "pid": me, "pid_start": "1"}}
    assert process_start(me) != "1"
    assert orphan_reason(reused, host=host, now=time.time(), grace_s=60) is not None


def test_on_other_hosts_only_the_heartbeat_decides() -> None:
    attrs = {SWEEPER_PREFIX: {"host": "elsewhere", "pid": 1, "pid_start": ""}, HEARTBEAT: 1000.0}
    assert orphan_reason(attrs, host="here", now=1030.0, grace_s=60) is None
    reason = orphan_reason(attrs, host="here", now=1100.0, grace_s=60)
    assert reason is not None and "no heartbeat from elsewhere for 100 s" in reason
    # trials of other tools (no owner attributes) are left alone
    assert orphan_reason({}, host="here", now=1e12, grace_s=1) is None


# --- the job's trial handle on a real journal file ---------------------------------------------


def new_study(tmp_path: Path, pruner: dict | None):
    storage_path = str(tmp_path / "optuna.journal")
    study = optuna.create_study(
        storage=open_storage(storage_path), study_name="s", direction="maximize"
    )
    study.set_user_attr(PRUNER_ATTR, pruner)
    return storage_path, study


def run_trial(study, values: list[float]) -> None:
    trial = study.ask()
    for step, value in enumerate(values, 1):
        trial.report(value, step)
    study.tell(trial, values[-1])


def test_the_handle_reports_every_evaluation_and_says_stop_when_pruned(tmp_path: Path) -> None:
    storage_path, study = new_study(tmp_path, {"name": "median", "n_startup_trials": 2})
    for _ in range(2):
        run_trial(study, [0.5, 0.7, 0.9])
    trial = study.ask()
    for key, value in owner_attrs(SWEEPER_PREFIX).items():
        study._storage.set_trial_system_attr(trial._trial_id, key, value)
    handle = TrialHandle.open(TrialConfig(storage_path, "s", trial.number), watch_s=0.05)
    try:
        assert isinstance(handle.study.pruner, optuna.pruners.MedianPruner)
        assert handle(1, {"val/acc": 0.6}) is False  # above the median at step 1
        assert handle(2, {"val/acc": 0.1}) is True  # far below it at step 2
        assert handle.pruned_at == 2
        handle.attach_run("run-123")
    finally:
        handle.close()
    frozen = study._storage.get_trial(trial._trial_id)
    assert frozen.intermediate_values == {1: 0.6, 2: 0.1}
    assert frozen.user_attrs["mlflow.run_id"] == "run-123"
    job = frozen.system_attrs[JOB_PREFIX]
    assert job["pid"] == os.getpid() and job["host"] == socket.gethostname()
    assert job["ended"] is True  # closed: this process no longer runs the trial
    assert frozen.system_attrs[HEARTBEAT] > 0


def test_the_handle_refuses_a_trial_that_is_not_running(tmp_path: Path) -> None:
    storage_path, study = new_study(tmp_path, None)
    run_trial(study, [0.5])
    with pytest.raises(ValueError, match="trial 0 of 's' is COMPLETE, not RUNNING"):
        TrialHandle.open(TrialConfig(storage_path, "s", 0))
    with pytest.raises(ValueError, match="no study 'nope'"):
        TrialHandle.open(TrialConfig(storage_path, "nope", 0))


def test_the_handle_stops_the_run_when_its_sweep_process_died(tmp_path: Path) -> None:
    storage_path, study = new_study(tmp_path, None)
    trial = study.ask()
    sweeper = {"host": socket.gethostname(), "pid": dead_pid(), "pid_start": ""}
    study._storage.set_trial_system_attr(trial._trial_id, SWEEPER_PREFIX, sweeper)
    handle = TrialHandle.open(TrialConfig(storage_path, "s", trial.number), watch_s=0.02)
    try:
        deadline = time.monotonic() + 30
        while handle.stop_reason is None and time.monotonic() < deadline:
            time.sleep(0.02)
        with pytest.raises(SweepGone, match=f"sweep process {sweeper['pid']} died"):
            handle(1, {"val/acc": 0.5})
    finally:
        handle.close()
    assert SweepGone.run_status == "KILLED"


# --- the journal lock ---------------------------------------------------------------------------


def test_a_journal_lock_left_by_a_dead_process_is_broken_at_once(tmp_path: Path) -> None:
    journal = tmp_path / "optuna.journal"
    journal.touch()
    gone = dead_pid()
    os.symlink(f"{journal}#owner={socket.gethostname()}:{gone}:", f"{journal}.lock")
    lock = OwnedSymlinkLock(str(journal), grace_period=3600)  # Optuna alone would wait an hour
    assert lock.acquire()
    assert f"#owner={socket.gethostname()}:{os.getpid()}:" in os.readlink(f"{journal}.lock")
    lock.release()
    assert not os.path.lexists(f"{journal}.lock")


def test_a_journal_lock_held_by_a_live_process_is_respected(tmp_path: Path) -> None:
    journal = tmp_path / "optuna.journal"
    journal.touch()
    holder = OwnedSymlinkLock(str(journal))
    holder.acquire()
    waiter = OwnedSymlinkLock(str(journal))
    assert waiter._break_if_orphaned() is False  # alive: not broken
    # Optuna's own lock (no owner in the link) is never broken early either
    holder.release()
    os.symlink(str(journal), f"{journal}.lock")
    assert waiter._break_if_orphaned() is False
    os.unlink(f"{journal}.lock")


# --- telling the study and MLflow --------------------------------------------------------------


def study_run(tmp_path: Path, study, parent=None, **overrides) -> StudyRun:
    settings = dict(
        study=study,
        space=space("lr=choice(0.1, 0.2)"),
        extend=None,
        storage_str=str(tmp_path / "optuna.journal"),
        label="optuna.journal",
        n_trials=4,
        n_jobs=1,
        max_failures=2,
        grid=False,
        grace_s=60,
        heartbeat_s=30,
        direction="maximize",
    )
    run = StudyRun(**{**settings, **overrides})
    run.parent = parent
    return run


def test_requeue_fails_the_trial_and_queues_its_params_once_more(tmp_path: Path) -> None:
    _, study = new_study(tmp_path, None)
    run = study_run(tmp_path, study)
    trial = study.ask(fixed_distributions=run.space.distributions())
    run.requeue(Flight(trial.number, trial._trial_id, "lr=0.1", []), "interrupted (SIGTERM)")
    failed, retry = study.get_trials(deepcopy=False)
    assert failed.state == TrialState.FAIL
    assert failed.user_attrs["fail_reason"] == "interrupted (SIGTERM)"
    assert retry.state == TrialState.WAITING and retry.params == failed.params
    assert retry.system_attrs["retry_history"] == [failed.number]
    # a retried failure does not count towards max_failures; a real one does
    assert run.failure_stop() is None
    again = study.ask()
    assert again.number == retry.number and again.params == failed.params


def test_max_failures_counts_failed_trials_of_the_whole_study(tmp_path: Path) -> None:
    _, study = new_study(tmp_path, None)
    run = study_run(tmp_path, study, max_failures=2)
    for _ in range(2):
        trial = study.ask()
        study.tell(trial, state=TrialState.FAIL)
    assert run.failure_stop() == "2 trials failed (max_failures=2)"


def test_room_counts_complete_and_pruned_and_running_against_n_trials(tmp_path: Path) -> None:
    _, study = new_study(tmp_path, None)
    run = study_run(tmp_path, study, n_trials=4)
    run_trial(study, [0.5])
    pruned = study.ask()
    study.tell(pruned, state=TrialState.PRUNED)
    failed = study.ask()
    study.tell(failed, state=TrialState.FAIL)
    study.ask()  # running
    assert run.room() == 1  # 4 - (1 complete + 1 pruned) - 1 running; the FAIL does not count


def test_room_of_a_grid_stops_when_every_point_is_taken(tmp_path: Path) -> None:
    _, study = new_study(tmp_path, None)
    run = study_run(tmp_path, study, n_trials=20, grid=True)  # grid of 2 points
    assert run.room() == 2
    first = study.ask(fixed_distributions=run.space.distributions())
    study.tell(first, 0.5)
    second = {0.1: 0.2, 0.2: 0.1}[first.params["lr"]]
    study.enqueue_trial({"lr": second})
    assert run.room() == 1  # the last point, waiting
    study.tell(study.ask(fixed_distributions=run.space.distributions()), 0.6)
    assert run.room() == 0


def test_a_failed_trial_ends_its_finished_mlflow_run_failed_with_the_reason(
    tmp_path: Path,
) -> None:
    from doomnet import tracking
    from doomnet.config import TrackingConfig

    cfg = TrackingConfig(uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    _, study = new_study(tmp_path, None)
    with tracking.sweep_run(
        cfg, project_dir=tmp_path, run_name="study s", params={}, tags={}
    ) as parent:
        run = study_run(tmp_path, study, parent=parent)
        trial = study.ask(fixed_distributions=run.space.distributions())
        child = parent.client.create_run(
            parent.experiment_id, tags={"mlflow.parentRunId": parent.run_id}
        )
        child_id = child.info.run_id
        parent.client.set_terminated(child_id, "FINISHED")  # the app returned NaN and ended well
        study._storage.set_trial_user_attr(trial._trial_id, "mlflow.run_id", child_id)
        run.tell(
            Flight(trial.number, trial._trial_id, "lr=0.1", []),
            "FAIL",
            None,
            "the objective is nan",
        )
        # and a good trial becomes the parent's best
        good = study.ask(fixed_distributions=run.space.distributions())
        run.tell(Flight(good.number, good._trial_id, "lr=0.2", []), "COMPLETE", 0.9, "")
    client = parent.client
    failed = client.get_run(child_id)
    assert failed.info.status == "FAILED"
    assert failed.data.tags["optuna.state"] == "FAIL"
    assert failed.data.tags["doomnet.end_reason"] == "the objective is nan"
    top = client.get_run(parent.run_id)
    assert top.data.tags["optuna.best_trial"] == str(good.number)
    assert top.data.metrics["sweep/best_value"] == 0.9
    assert top.data.metrics["sweep/failed"] == 1


# --- presentation ------------------------------------------------------------------------------


def test_the_study_table_shows_the_best_first_and_every_failure() -> None:
    rows = [JobRow(i, f"lr={i}", "COMPLETE", i / 10) for i in range(12)]
    rows += [JobRow(12, "lr=20", "FAIL", None, "DivergedError: boom"), JobRow(13, "x", "PRUNED")]
    table = format_study(rows, "study s", top=3)
    lines = table.splitlines()
    assert lines[0] == "study s: 14 trials (12 complete, 1 fail, 1 pruned)"
    assert lines[2].startswith("*  11  lr=11") and lines[3].startswith("   10")
    assert "DivergedError: boom" in table and "9 more complete trials" in table
    assert lines[-1] == "best: #11 lr=11  value 1.1000"
    assert format_study(rows, "s", direction="minimize", top=1).splitlines()[2].startswith("*   0")


def test_storage_labels_hide_passwords_and_shorten_project_paths(tmp_path: Path) -> None:
    assert storage_label("postgresql://u:secret@db:5432/optuna", tmp_path) == (
        "postgresql://u:***@db:5432/optuna"
    )
    assert storage_label(str(tmp_path / "mlruns" / "optuna.journal"), tmp_path) == (
        "mlruns/optuna.journal"
    )


def test_the_shipped_named_sweeps_compose_into_optuna_studies() -> None:
    """sweeps/*.yaml at the project's top level is the config group `sweeps`."""
    from hydra import compose, initialize_config_dir

    from doomnet.config import CONF_DIR, to_config

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        tpe = compose("config", overrides=["sweeps=lr_hidden"], return_hydra_config=True)
        grid = compose("config", overrides=["sweeps=notebook_grid"], return_hydra_config=True)
        task = to_config(compose("config", overrides=["sweeps=notebook_grid"]))
    sweeper = tpe.hydra.sweeper
    assert sweeper._target_.endswith("optuna_sweeper.OptunaSweeper")
    assert sampler_spec(sweeper.sampler) == {"_target_": "optuna.samplers.TPESampler"}
    assert set(sweeper.params) == {"lr", "hidden", "init_std"}
    assert sweeper.pruner.name == "median" and sweeper.study_name == "lr_hidden"
    s = space(*(f"{k}={v}" for k, v in sweeper.params.items()))
    assert isinstance(s.params["lr"].distribution, FloatDistribution)
    assert sampler_spec(grid.hydra.sweeper.sampler)["_target_"] == "optuna.samplers.GridSampler"
    g = space(*(f"{k}={v}" for k, v in grid.hydra.sweeper.params.items()))
    assert g.grid_size() == grid.hydra.sweeper.n_trials == 12
    # the task config itself is the project's, not a copy in the sweep
    assert task.iterations == 2000 and task.data.name == "mnist_5k" and task.eval_every == 20
