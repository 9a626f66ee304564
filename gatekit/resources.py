"""Files the kit ships beside its code (templates, hash locks, the on-host programs), found through the
installed package, so the kit works the same from a checkout (editable install) and from its wheel."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def templates_dir() -> Path:
    return Path(str(files("gatekit.templates")))


def requirements_file(name: str) -> Path:
    """`litellm_requirements`: absolute, or relative to the kit ("requirements/litellm.lock" is shipped in
    the kit's requirements folder); any other relative path is the operator's, from the current directory."""
    path = Path(name)
    if path.is_absolute():
        return path
    if path.parts[:1] == ("requirements",):
        return Path(str(files("gatekit.requirements"))).joinpath(*path.parts[1:])
    return Path.cwd() / path


def onhost_source(name: str) -> str:
    """Source of a program (or module) that runs on the host, from gatekit/onhost/."""
    return files("gatekit.onhost").joinpath(name).read_text()
