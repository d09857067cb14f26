"""DoomNet's Hydra sweepers: `doomnet_grid` (the default) and `optuna`."""
