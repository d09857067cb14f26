"""Config composition and validation, as Hydra composes it (no training)."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir

from doomnet.config import CONF_DIR, Config, ConfigError, check_command_line, to_config


def composed(*overrides: str) -> Config:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return to_config(compose(config_name="config", overrides=list(overrides)))


def test_defaults_are_the_notebook_recipe_on_the_offline_set() -> None:
    cfg = composed()
    assert (cfg.lr, cfg.hidden_sizes, cfg.init_std, cfg.iterations, cfg.batch_size) == (
        0.2,
        (20,),
        1e-4,
        2000,
        None,
    )
    assert cfg.data.name == "mnist_5k" and cfg.optimizer.name == "sgd" and cfg.init == "normal"
    assert cfg.tracking.experiment == "doomnet" and cfg.tracking.enabled


def test_experiment_notebook_is_the_original_recipe_exactly() -> None:
    cfg = composed("experiment=notebook")
    assert cfg.data.name == "mnist"
    assert (cfg.lr, cfg.hidden_sizes, cfg.init_std, cfg.iterations, cfg.batch_size) == (
        0.2,
        (20,),
        1e-4,
        2000,
        None,
    )
    assert cfg.optimizer.name == "sgd" and cfg.init == "normal" and cfg.l2 == 0.0


def test_presets_override_defaults_and_the_command_line_overrides_presets() -> None:
    assert composed("experiment=quick").iterations == 300
    cfg = composed("experiment=quick", "iterations=50")
    assert cfg.iterations == 50 and cfg.data.name == "digits"


def test_groups_and_nested_values() -> None:
    cfg = composed("optimizer=momentum", "optimizer.nesterov=true", "hidden=[64,32]")
    assert cfg.optimizer.name == "momentum" and cfg.optimizer.nesterov is True
    assert cfg.hidden_sizes == (64, 32)
    assert composed("tracking=off").tracking.enabled is False


@pytest.mark.parametrize(
    "argv, message",
    [
        (["lr=abc"], "lr must be a number, got 'abc'."),
        (["hiden=20"], "Unknown config key 'hiden' (did you mean 'hidden'?)."),
        (["optimizer.momentun=0.5"], "did you mean 'optimizer.momentum'?"),
        (["+foo=1"], "Unknown config key 'foo'"),
        (["lr=-1"], "lr must be > 0, got -1."),
        (["lr=nan"], "lr must be a finite number, got nan."),
        (["lr=1e400"], "lr must be a finite number, got inf."),
        (["hidden=0"], "hidden must be >= 1, got 0."),
        (["hidden=[64,0]"], "hidden must be >= 1, got 0."),
        (["iterations=0"], "iterations must be >= 1, got 0."),
        (["iterations=2.5"], "iterations must be a whole number, got 2.5."),
        (["data=nope"], "Unknown data set 'nope'; choose one of: digits, fashion_mnist, mnist"),
        (["optimizer=adamw"], "Unknown optimizer 'adamw'"),
        (["batch_size=0"], "batch_size must be >= 1, got 0."),
        (["batch_size=5000"], "batch_size must be <= the 3600 training samples of mnist_5k"),
        (["-m", "lr=0.1,0.2,-3", "hidden=20,64"], "lr must be > 0, got -3."),
        (["-m", "hidden=20,64", "iterations=range(0,3)"], "iterations must be >= 1, got 0."),
        (["optimizer=momentum", "optimizer.momentum=1.5"], "optimizer.momentum must be < 1"),
        (["data.val_fraction=1"], "data.val_fraction must be < 1"),
    ],
)
def test_the_pre_flight_refuses_bad_values_in_one_sentence(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        check_command_line(argv)
    text = str(info.value)
    assert message in text
    assert "\n" not in text


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["-m", "lr=0.05,0.2", "hidden=20,64"],
        ["-m", "lr=tag(log,interval(1e-3,1))", "hidden=choice(20,64)"],
        ["experiment=quick", "batch_size=64"],
        ["--cfg", "job", "lr=0.1"],
    ],
)
def test_the_pre_flight_accepts_good_command_lines(argv: list[str]) -> None:
    check_command_line(argv)
