"""What the model repository on disk offers, and which of it the version policy wants served.

Pure functions over the folder `<name>/<version>/manifest.json`, so the registry's reconcile step can be
reasoned about (and tested) apart from the sessions it builds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from service.manifest import MANIFEST_FILENAME

Fingerprint = tuple[tuple[str, int, int], ...]
"""(relative path, size, mtime in ns) of every file of a version folder: a change means "load it again"."""


def fingerprint(version_dir: Path) -> Fingerprint:
    """Cheap change detection: a rewritten or still-growing file changes its size or mtime."""
    entries = []
    for path in sorted(version_dir.rglob("*")):
        try:
            stat = path.stat()
        except OSError:  # deleted between listing and stat: the next scan sees the settled state
            continue
        if path.is_file():
            entries.append((path.relative_to(version_dir).as_posix(), stat.st_size, stat.st_mtime_ns))
    return tuple(entries)


def scan(repository: Path) -> dict[str, dict[str, Path]]:
    """name -> version -> folder, for every numeric version folder that holds a manifest.

    Folders with other names (a `2.tmp` being copied in, say) are ignored, so writing a bundle elsewhere
    and renaming it into place publishes it atomically.
    """
    found: dict[str, dict[str, Path]] = {}
    if not repository.is_dir():
        return found
    for model_dir in sorted(p for p in repository.iterdir() if p.is_dir()):
        versions = {
            v.name: v for v in model_dir.iterdir() if v.name.isdigit() and (v / MANIFEST_FILENAME).is_file()
        }
        if versions:
            found[model_dir.name] = versions
    return found


def by_version(versions: Mapping[str, object]) -> list[str]:
    """Version names, highest first (numeric order: "10" after "9")."""
    return sorted(versions, key=int, reverse=True)


@dataclass(frozen=True)
class VersionPolicy:
    """Triton's version policies: `latest` (the highest N that load), `all`, or `specific` versions."""

    kind: Literal["latest", "all", "specific"] = "latest"
    latest: int = 1
    specific: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def candidates(self, name: str, on_disk: Mapping[str, object]) -> list[str]:
        """Versions worth trying for `name`, highest first; `limit` says how many of them may serve."""
        ordered = by_version(on_disk)
        if self.kind == "specific" and name in self.specific:
            return [v for v in ordered if v in self.specific[name]]
        return ordered

    def limit(self, name: str) -> int | None:
        """How many versions of `name` serve at once (None: every candidate that loads)."""
        if self.kind == "all" or (self.kind == "specific" and name in self.specific):
            return None
        return self.latest

    def describe(self, name: str) -> str:
        if self.kind == "specific" and name in self.specific:
            return f"specific versions {sorted(self.specific[name], key=int)}"
        return "all versions" if self.kind == "all" else f"the latest {self.latest} version(s)"
