"""Named sweeps: the config group `sweeps` read from `<project>/sweeps/*.yaml`.

`python train.py -m sweeps=lr_hidden` composes `<project>/sweeps/lr_hidden.yaml`, where
`<project>` is the parent of the app's primary config folder (`conf/`). The sweeps live at the
top of the project, next to `conf/`, not inside it; a plain `hydra.searchpath` entry cannot
say "the folder next to conf/" (it resolves against the working directory) and would expose
every folder of the project as a config group. So a search-path plugin adds one source that
serves the `sweeps` group and nothing else.

It also keeps `hydra/sweeper=optuna` pointing at DoomNet's sweeper when PyPI's
hydra-optuna-sweeper is installed too (whichever plugin Hydra scans last would otherwise win
silently); DoomNet's sweeper then refuses to run and says why.
"""

import os
from pathlib import Path
from typing import Optional

from hydra._internal.core_plugins.file_config_source import FileConfigSource
from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.object_type import ObjectType
from hydra.plugins.config_source import ConfigLoadError, ConfigResult
from hydra.plugins.search_path_plugin import SearchPathPlugin

GROUP = "sweeps"
SCHEME = "doomnet-sweeps"


class SweepsConfigSource(FileConfigSource):
    """`doomnet-sweeps://<project>`: `<project>/sweeps/` as the config group `sweeps`, only."""

    @staticmethod
    def scheme() -> str:
        return SCHEME

    @staticmethod
    def _inside(config_path: str) -> bool:
        parts = Path(config_path).parts
        return bool(parts) and parts[0] == GROUP

    def available(self) -> bool:
        return os.path.isdir(os.path.join(self.path, GROUP))

    def load_config(self, config_path: str) -> ConfigResult:
        if not self._inside(config_path):
            raise ConfigLoadError(f"Config not found : {config_path}")
        return super().load_config(config_path)

    def is_group(self, config_path: str) -> bool:
        if config_path in ("", "/"):
            return self.available()
        return self._inside(config_path) and super().is_group(config_path)

    def is_config(self, config_path: str) -> bool:
        return self._inside(config_path) and super().is_config(config_path)

    def list(self, config_path: str, results_filter: Optional[ObjectType]) -> list[str]:  # noqa: UP045
        if config_path in ("", "/"):
            if results_filter in (None, ObjectType.GROUP) and self.available():
                return [GROUP]
            return []
        if not self._inside(config_path):
            return []
        return super().list(config_path, results_filter)


class SweepsSearchPath(SearchPathPlugin):
    """Adds `<project>/sweeps` (project = parent of the primary config folder) when it exists."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        from hydra_plugins.doomnet_sweeper.optuna_sweeper import register

        register()  # after every plugin's import: DoomNet's `optuna` node is the one used
        for element in search_path.get_path():
            if element.provider != "main":
                continue
            path = element.path.removeprefix("file://")
            if "://" not in path:  # a folder, not a package (pkg://) or another source
                project = Path(path).resolve().parent
                if (project / GROUP).is_dir():
                    search_path.append(provider="doomnet-sweeps", path=f"{SCHEME}://{project}")
            return
