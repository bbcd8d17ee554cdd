"""Which bundle a search runs when none is named: ``GAZENLQ_BUNDLE``, else the user's default
bundle, kept in the platform's user data directory (``gaze-export --default`` puts it there;
``make demo`` does so with the demo's model)."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from gazenlq.atomic import atomic_dir
from gazenlq.bundle.manifest import MANIFEST, BundleError

ENV = "GAZENLQ_BUNDLE"


def default_bundle_dir() -> Path:
    """The user's default bundle: ``<user data dir>/gazenlq/bundles/default`` (on Linux
    ``$XDG_DATA_HOME/gazenlq/...``, ``~/.local/share/gazenlq/...`` without it)."""
    from platformdirs import user_data_path

    return user_data_path("gazenlq", appauthor=False) / "bundles" / "default"


@dataclass(frozen=True)
class BundleChoice:
    """A bundle directory and how it was chosen (``--explain`` says which)."""

    path: Path
    source: str  # "given", "$GAZENLQ_BUNDLE" or "default"

    def describe(self) -> str:
        return f"{self.path} ({self.source})"


def resolve_bundle(bundle: str | os.PathLike | None = None) -> BundleChoice:
    """``bundle`` when given, else ``$GAZENLQ_BUNDLE``, else the default bundle if one was
    installed; otherwise a one-line error saying how to get one."""
    if bundle is not None:
        return BundleChoice(Path(bundle), "given")
    if os.environ.get(ENV):
        return BundleChoice(Path(os.environ[ENV]), f"${ENV}")
    default = default_bundle_dir()
    if (default / MANIFEST).is_file():
        return BundleChoice(default, "default")
    raise BundleError(f"no bundle given, {ENV} is not set and there is no default bundle at "
                      f"{default}: name one, or install one with gaze-export CHECKPOINT "
                      "--default (make demo does)")


def install_default(bundle: str | os.PathLike) -> Path:
    """Copy the bundle directory ``bundle`` (engines included) to the default location,
    replacing the previous default atomically; returns the new default's path."""
    target = default_bundle_dir()
    with atomic_dir(target) as tmp:
        shutil.copytree(bundle, tmp, dirs_exist_ok=True)
    return target
