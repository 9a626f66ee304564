"""LiteLLM's hash-locked venv: built in the background beside the live one, into venvs/STAMP.

Everything that decides what ends up in the venv (the locks, the installer and its arguments) makes up
its stamp; a venv is built only when no complete build of that stamp exists (switching back to the previous
release reuses its build). The launcher names its build, so an instance runs from the venv it started with.
`venv` (a symlink) names the live set's build: on a gateway that does not serve yet it is switched once the
build succeeded; on a serving one the blue/green switch moves it when the new set is live (gatekit/onhost/rotate.py
record()). Builds other than the wanted one and the live one are removed.
"""

from __future__ import annotations

import hashlib
import io
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from pyinfra.api import FileUploadCommand, operation
from pyinfra.api.exceptions import PyinfraError
from pyinfra.operations import server

from gatekit import background
from gatekit.defaults import COMPROMISED_LITELLM_VERSIONS
from gatekit.onhost.layout import Layout
from gatekit.render import template
from gatekit.resources import requirements_file

PACKAGES = ["python3", "python3-venv"]  # the venv build needs them (python3-venv: ensurepip, Debian's pip wheel)
PIP_WHEELS = "/usr/share/python-wheels"  # python3-pip-whl: the pip that fetches uv for the build
DEFAULT_LOCK, DATABASE_LOCK, UV_LOCK = "requirements/litellm.lock", "requirements/litellm-db.lock", "requirements/uv.lock"


# The releases a gateway may run: the kit's locks cover their Python (the host's python3 builds the venv).
SUPPORTED_RELEASES = {("debian", "12"): "Debian 12 (bookworm, Python 3.11)", ("debian", "13"): "Debian 13 (trixie, Python 3.13)"}


def release_problem(os_release: str) -> str:
    """Why a gateway whose /etc/os-release reads `os_release` cannot build the venv from the kit's locks, or ''."""
    fields = dict(re.findall(r'(?:^|\s)([A-Z_]+)=("[^"]*"|\S*)', os_release))
    fields = {k: v.strip('"') for k, v in fields.items()}
    if (fields.get("ID"), fields.get("VERSION_ID")) in SUPPORTED_RELEASES:
        return ""
    seen = fields.get("PRETTY_NAME") or " ".join(filter(None, (fields.get("ID"), fields.get("VERSION_ID")))) or \
        "no /etc/os-release"
    return (f"{seen[:80]!r}: no gatekit lock covers its Python. Fix: run gateways on "
            f"{' or '.join(SUPPORTED_RELEASES.values())}.")


def lock_file(s: dict) -> Path:
    """The LiteLLM lock to install, refused when it pins a compromised release or carries no hashes."""
    name = s["litellm_requirements"]
    if s["litellm_database"] and name == DEFAULT_LOCK:
        name = DATABASE_LOCK
    path = requirements_file(name)
    try:
        text = path.read_text()
    except OSError as exc:
        raise PyinfraError(f"litellm_requirements: {path}: {exc.strerror}. Fix: name a hash-locked requirements "
                           f"file (absolute, or relative to the current directory), or leave the default.") from None
    for bad in COMPROMISED_LITELLM_VERSIONS:
        if f"litellm=={bad}" in text:
            raise PyinfraError(f"{path}: pins litellm=={bad}, a compromised release. Fix: use {DEFAULT_LOCK}.")
    if "--hash=sha256:" not in text:
        raise PyinfraError(f"{path}: no hashes. Fix: generate it with --generate-hashes (see its header).")
    return path


def _index_args(s: dict, tool: str) -> list[str]:
    args, url = [], ""
    if s["litellm_pip_find_links"]:
        url = s["litellm_pip_find_links"]
        args += ["--no-index", "--find-links", url]
    elif s["litellm_pip_index_url"]:
        url = s["litellm_pip_index_url"]
        args += ["--index-url", url]
    if urlsplit(url).scheme == "http" and tool == "pip":  # the scheme, any case: HTTP:// is plain HTTP too
        # The operator chose a plain-HTTP mirror; --require-hashes still pins every byte. (uv needs no flag.)
        args += ["--trusted-host", urlsplit(url).hostname]
    return args


def pip_args(s: dict) -> str:
    args = ["--disable-pip-version-check", "-q", "--require-hashes", "--no-deps", "--only-binary=:all:"]
    return " ".join(shlex.quote(a) for a in args + _index_args(s, "pip"))


def uv_args(s: dict) -> str:
    # uv compiles bytecode on all cores (the service cannot write .pyc files under ProtectSystem=strict,
    # so without them every start would compile LiteLLM again); no cache left behind on the host.
    args = ["-q", "--require-hashes", "--no-deps", "--only-binary", ":all:", "--compile-bytecode", "--no-cache"]
    return " ".join(shlex.quote(a) for a in args + _index_args(s, "uv"))


@dataclass(frozen=True)
class VenvBuild:
    """What a venv build for one host's settings consists of."""

    layout: Layout
    locks: dict  # host path -> lock text
    installer: tuple[str, str, str]  # installer, pip arguments, uv arguments
    stamp: str

    @classmethod
    def for_settings(cls, layout: Layout, s: dict) -> VenvBuild:
        locks = {layout.requirements_lock: lock_file(s).read_text(), layout.uv_lock: requirements_file(UV_LOCK).read_text()}
        installer = (s["litellm_installer"], pip_args(s), uv_args(s))
        stamp = hashlib.sha256("\n".join((*locks.values(), *installer)).encode()).hexdigest()
        return cls(layout, locks, installer, stamp)

    def script(self) -> str:
        L = self.layout
        return template(
            "litellm/venv-install.sh.j2", venv=L.venv, new=L.venv_build(self.stamp), installer=self.installer[0],
            pip_args=self.installer[1], uv_args=self.installer[2], lock=L.requirements_lock, uv_lock=L.uv_lock,
            pip_wheels=PIP_WHEELS, stamp=self.stamp,
        )

    def start(self, timeout: int):
        start_venv_install(
            name=f"Start the LiteLLM venv install in the background ({self.installer[0]} --require-hashes)",
            home=self.layout.litellm_home,
            uploads={**self.locks, self.layout.install_script: self.script()},
            script=self.layout.install_script,
            unit=self.layout.venv_install_unit,
            timeout=timeout,
        )

    def wait(self, serving: bool):
        """Wait for the build. `serving`: the live instances keep their venv, the blue/green switch moves `venv`
        to the new build when the new set is live; otherwise `venv` moves now."""
        L = self.layout
        return server.shell(
            name="Wait for the LiteLLM venv install" + ("" if serving else ", then switch to it"),
            commands=switch_venv_commands(L.venv, L.venv_build(self.stamp), self.stamp, L.venv_install_unit,
                                          move_live=not serving),
        )


@operation()
def start_venv_install(home: str, uploads: dict, script: str, unit: str, timeout: int):
    """Upload the locks and the install script, run it as a transient unit and return at once.

    One operation (not one per file) so that it is among the gateway's first operations.
    """
    yield f"install -d -m 755 {home} {home}/bin"
    for dest, content in uploads.items():
        yield FileUploadCommand(io.StringIO(content), dest)
        yield f"chown root:root {dest} && chmod {'700' if dest == script else '644'} {dest}"
    # (A run cut off earlier is stopped first: the script then rebuilds its half-done venv.)
    # Lowest CPU priority: the install must not starve what runs beside it (a live LiteLLM during an
    # upgrade; the deploy's own package installs on a fresh host). User=root gives it HOME (/root/.netrc).
    yield from background.start_commands(
        unit, "gatekit: install LiteLLM into its venv", script, timeout,
        ("Nice=19", "IOSchedulingPriority=7", "User=root", *build_sandbox(home)),
    )


def build_sandbox(home: str) -> tuple[str, ...]:
    """The build runs the installers on code from the index: it may write only LiteLLM's home, read
    /root/.netrc (mirror credentials) but nothing else of the home directories, and holds no capability.
    `systemd-analyze security gatekit-venv-install`: 1.7 (OK), measured on a sandbox host."""
    return (
        "UMask=0022", "NoNewPrivileges=yes", "CapabilityBoundingSet=", "PrivateUsers=yes", "ProtectSystem=strict",
        f"ReadWritePaths={home}", "ProtectHome=read-only", "PrivateTmp=yes", "PrivateDevices=yes",
        "ProtectKernelTunables=yes", "ProtectKernelModules=yes", "ProtectKernelLogs=yes", "ProtectControlGroups=yes",
        "ProtectClock=yes", "ProtectHostname=yes", "ProtectProc=invisible", "ProcSubset=pid", "RestrictNamespaces=yes",
        "RestrictRealtime=yes", "RestrictSUIDSGID=yes", "LockPersonality=yes", "MemoryDenyWriteExecute=yes",
        "RemoveIPC=yes", "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6", "SystemCallArchitectures=native",
        "SystemCallFilter=@system-service",
    )


def switch_venv_commands(venv: str, new: str, stamp: str, unit: str = Layout.venv_install_unit,
                         move_live: bool = True) -> list[str]:
    """Wait for the background build; on failure show the build's log, leave the live venv alone and fail. On
    success (`move_live`) make it the live venv (symlink switch). Kept: the new build and the one live before this
    step (a switch back to it reuses it); other builds are removed."""
    move = f"ln -sfn {new} {venv}.next && mv -T {venv}.next {venv}; " if move_live else ""
    return [
        background.wait_command(
            unit,
            done=f"[ \"$(cat {new}/.gatekit-stamp 2>/dev/null)\" = {stamp} ]",
            failure=f"LiteLLM venv install failed (result: $result); the live venv is unchanged. Fix: see the "
            f"lines above (journalctl -u {unit}); re-run the deploy to retry.",
        ),
        # Hosts deployed before venvs were versioned hold a plain directory here (on a serving gateway the switch
        # moves it aside once its instances stopped: rotate.py point_venv_at_live).
        *([f"if [ -d {venv} ] && [ ! -L {venv} ]; then rm -rf {venv}.old && mv {venv} {venv}.old; fi"] if move_live else []),
        f"prev=$(readlink {venv} || true); " + move +
        f"for d in $(dirname {new})/*; do [ \"$d\" = {new} ] || [ \"$d\" = \"$prev\" ] || rm -rf \"$d\"; done; "
        f"rm -rf {venv}.old",
    ]
