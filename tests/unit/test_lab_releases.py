"""The lab's broken LiteLLM release (lab/releases.py): a valid wheel a hash lock can pin, never taken for the real one."""

from __future__ import annotations

import base64
import hashlib
import zipfile

from packaging.specifiers import SpecifierSet

from lab import releases

LOCK = ("aiohttp==3.0 \\\n    --hash=sha256:" + "a" * 64 + "\n"
        "litellm==1.0.0 \\\n    --hash=sha256:" + "b" * 64 + " \\\n    --hash=sha256:" + "c" * 64 + "\n    # via x\n")


def _wheel(d):
    path = d / "litellm-1.0.0-py3-none-any.whl"
    files = {"litellm/main.py": b"async def acompletion():\n    return 1\n",
             "litellm-1.0.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: litellm\nVersion: 1.0.0\n",
             "litellm-1.0.0.dist-info/WHEEL": b"Wheel-Version: 1.0\n", "litellm-1.0.0.dist-info/RECORD": b""}
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return path


def test_the_broken_wheel_is_a_valid_wheel_of_another_version_that_fails_every_call(tmp_path):
    _wheel(tmp_path)
    broken = releases.build_broken_wheel(tmp_path, LOCK)
    version = "1.0.0" + releases.BROKEN_SUFFIX
    assert broken.name == f"litellm-{version}-py3-none-any.whl"
    assert version not in SpecifierSet("==1.0.0")  # the real release's pin never installs it
    with zipfile.ZipFile(broken) as z:
        names = z.namelist()
        assert f"litellm-{version}.dist-info/METADATA" in names and not [n for n in names if "1.0.0.dist-info" in n]
        assert f"Version: {version}" in z.read(f"litellm-{version}.dist-info/METADATA").decode()
        main = z.read("litellm/main.py").decode()
        assert releases.BROKEN_MESSAGE in main and main.rstrip().endswith(f'raise RuntimeError("{releases.BROKEN_MESSAGE}")')
        for line in z.read(f"litellm-{version}.dist-info/RECORD").decode().splitlines():
            name, digest, size = line.rsplit(",", 2)
            if digest:  # every file as recorded, so an installer that checks RECORD accepts it
                data = z.read(name)
                assert digest == "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
                assert int(size) == len(data)
    assert releases.build_broken_wheel(tmp_path, LOCK).read_bytes() == broken.read_bytes()  # built once, same bytes


def test_the_broken_lock_pins_the_broken_wheel_by_its_hash_and_keeps_every_other_pin(tmp_path, monkeypatch):
    _wheel(tmp_path)
    monkeypatch.setattr(releases, "requirements_file", lambda name: type("P", (), {"read_text": lambda self: LOCK})())
    lock = releases.broken_lock(tmp_path)
    digest = hashlib.sha256(next(tmp_path.glob("*post999*.whl")).read_bytes()).hexdigest()
    assert f"litellm==1.0.0{releases.BROKEN_SUFFIX} \\\n    --hash=sha256:{digest}\n" in lock
    assert "b" * 64 not in lock and "c" * 64 not in lock and "aiohttp==3.0" in lock and "# via x" in lock


MARKED = """# header
litellm==1.106.2 \\
    --hash=sha256:aaaa
    # via -r requirements.in
async-timeout==5.0.1 ; python_full_version < '3.11.3' \\
    --hash=sha256:bbbb \\
    --hash=sha256:cccc
colorama==0.4.6 ; sys_platform == 'win32' \\
    --hash=sha256:dddd
"""


def test_the_wheelhouse_asks_for_what_each_hosts_python_installs_without_markers():
    """pip download judges markers by its own Python (3.11.7 here), never by --python-version: the lab's wheelhouse
    would lack Debian 12's async-timeout (python_full_version < 3.11.3) and its venv build would fail."""
    from lab.env import PYTHONS, lock_for_python

    assert PYTHONS == ("3.11.2", "3.13.5")
    assert lock_for_python(MARKED, "3.11.2") == ("litellm==1.106.2 \\\n    --hash=sha256:aaaa\n    # via -r requirements.in\n"
                                                 "async-timeout==5.0.1 \\\n    --hash=sha256:bbbb \\\n"
                                                 "    --hash=sha256:cccc\n")
    assert lock_for_python(MARKED, "3.13.5") == "litellm==1.106.2 \\\n    --hash=sha256:aaaa\n    # via -r requirements.in\n"
