"""Train DoomNet once, or sweep it: `uv run train.py -m lr=0.05,0.2 hidden=20,64`.

Thin on purpose: Hydra composes the config, `doomnet.run` does the work.
"""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from doomnet.config import to_config
from doomnet.run import cli, run


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    """Return the objective (final validation accuracy) so any Hydra sweeper can optimise it."""
    return run(to_config(cfg))


if __name__ == "__main__":
    cli(main, config_dir=Path(__file__).resolve().parent / "conf")
