"""The LiteLLM releases the lab deploys: the kit's locks, and a broken one built here.

The broken release is the locked LiteLLM wheel with one change, `litellm.acompletion` raising: it installs from its
own hash lock, starts and reports ready like the real one, and fails every call (a release that "starts but fails
calls", as LiteLLM's own 1.52.14 did with valid keys). Its version (VERSION.post999+gatekit.broken) keeps it apart
from the real wheel in the one wheelhouse the hosts install from: a pin ==VERSION matches VERSION+anything (PEP 440),
so a bare local label would be installed in place of the real release; a post-release is not matched.
"""

from __future__ import annotations

import base64
import hashlib
import re
import zipfile
from pathlib import Path

from gatekit.resources import requirements_file
from gatekit.roles.venv import DEFAULT_LOCK

UPGRADE_LOCK = "requirements/litellm-1.108.7.lock"  # shipped with the kit: the upgrade the e2e test deploys
BROKEN_SUFFIX = ".post999+gatekit.broken"
BROKEN_MESSAGE = "gatekit lab: a LiteLLM release that fails every call"
_BREAK = f'''

# {BROKEN_MESSAGE}: lab/releases.py appended this to the locked wheel.
async def acompletion(*args, **kwargs):
    raise RuntimeError("{BROKEN_MESSAGE}")
'''
_PIN = re.compile(r"^litellm==(?P<version>[^ ]+) \\\n(?:    --hash=sha256:[0-9a-f]{64}(?: \\)?\n)+", re.M)


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def locked_version(lock_text: str) -> str:
    return _PIN.search(lock_text).group("version")


def build_broken_wheel(wheelhouse: Path, lock_text: str) -> Path:
    """The broken wheel beside the real one in `wheelhouse` (built once: the same bytes each time)."""
    version = locked_version(lock_text)
    src = next(wheelhouse.glob(f"litellm-{version}-*.whl"))
    tags = src.name[len(f"litellm-{version}-"):]
    broken = version + BROKEN_SUFFIX
    target = wheelhouse / f"litellm-{broken}-{tags}"
    if target.exists():
        return target
    old_info, new_info = f"litellm-{version}.dist-info/", f"litellm-{broken}.dist-info/"
    tmp = target.with_suffix(".tmp")
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zout:
        files = {i.filename: zin.read(i) for i in zin.infolist()}
        files["litellm/main.py"] += _BREAK.encode()
        meta = files[old_info + "METADATA"].decode()
        files[old_info + "METADATA"] = re.sub(r"^Version: .*$", f"Version: {broken}", meta, count=1, flags=re.M).encode()
        record = []
        for name in files:
            if name == old_info + "RECORD":
                continue
            record.append(f"{name.replace(old_info, new_info, 1)},{_record_hash(files[name])},{len(files[name])}")
        record.append(f"{new_info}RECORD,,")
        files[old_info + "RECORD"] = ("\n".join(record) + "\n").encode()
        for name, data in files.items():
            info = zipfile.ZipInfo(name.replace(old_info, new_info, 1), date_time=(2026, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zout.writestr(info, data, zipfile.ZIP_DEFLATED)
    tmp.rename(target)
    return target


def broken_lock(wheelhouse: Path) -> str:
    """The kit's default lock with its LiteLLM pin replaced by the broken wheel's (built if needed)."""
    lock = requirements_file(DEFAULT_LOCK).read_text()
    wheel = build_broken_wheel(wheelhouse, lock)
    pin = f"litellm=={locked_version(lock)}{BROKEN_SUFFIX} \\\n    --hash=sha256:{hashlib.sha256(wheel.read_bytes()).hexdigest()}\n"
    return _PIN.sub(lambda _: pin, lock, count=1)
