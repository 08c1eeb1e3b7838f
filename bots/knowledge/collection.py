"""A collection: ``knowledge/<name>/`` with files and an optional ``collection.toml``."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bots.core.config import ConfigError, describe_validation_error
from bots.knowledge.loaders import LOADERS

COLLECTION_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}[a-z0-9]$|^[a-z0-9]$")
SETTINGS_FILE = "collection.toml"


class CollectionSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    title: str = ""
    language: str = ""  # informative: "zh", "en", "zh-en"
    role: Literal["facts", "style"] = "facts"  # style: the author's own prose, used as voice examples
    include: list[str] = ["*"]  # glob patterns, relative to the collection folder
    exclude: list[str] = []
    chunk_size: int = Field(500, ge=100, le=8000)  # characters
    chunk_overlap: int = Field(80, ge=0, le=2000)
    boilerplate_repeats: int = Field(3, ge=0)  # lines repeated this often are dropped; 0: keep all


class Collection:
    def __init__(self, root: Path, name: str) -> None:
        if not COLLECTION_NAME.fullmatch(name):
            raise ConfigError(f"{name!r} is not a collection name (a-z, 0-9, - and _)")
        self.name = name
        self.folder = root / name
        if not self.folder.is_dir():
            raise ConfigError(f"no collection {name!r}: folder {self.folder} not found")
        self.settings = self._read_settings()

    def _read_settings(self) -> CollectionSettings:
        path = self.folder / SETTINGS_FILE
        if not path.is_file():
            return CollectionSettings(title=self.name)
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
            return CollectionSettings.model_validate({"title": self.name, **raw})
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        except ValidationError as exc:
            raise ConfigError(describe_validation_error(path, exc)) from None

    def files(self) -> list[Path]:
        """Loadable files matching include and not exclude, sorted; never outside the folder."""
        chosen = []
        for path in sorted(self.folder.rglob("*")):
            if path.is_file() and not path.is_symlink() and self.admits(path.relative_to(self.folder)):
                chosen.append(path)
        return chosen

    def admits(self, relative: Path) -> bool:
        """Whether a file at ``relative`` (to the folder) is one of the collection's: a loadable
        type, not hidden, not the settings file, matching include and not exclude."""
        name = relative.as_posix()
        return (
            relative.name != SETTINGS_FILE
            and not any(part.startswith(".") for part in relative.parts)
            and relative.suffix.lower() in LOADERS
            and any(fnmatch.fnmatch(name, pattern) for pattern in self.settings.include)
            and not any(fnmatch.fnmatch(name, pattern) for pattern in self.settings.exclude)
        )


def collection_names(root: Path) -> list[str]:
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and COLLECTION_NAME.fullmatch(p.name))
