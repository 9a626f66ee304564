"""Property: any value a setting can be given is either refused by validation (one line: where, field, fix) or
renders into files that every reader reads as intended: each file passes its own syntax checker and has the
structure of the same render with a plain twin of the value (no line, directive, key, word or block added or
lost), and the values that reach Python, shell and environment files read back exactly.

Every setting of gatekit/defaults.py is covered, each file of tests/unit/rendered.py (all that the roles
render). The cheap checks (tests/unit/syntax.py's parsers, YAML/JSON, compile(), bash's parse) run on every
example; the real tools (nginx -t, systemd-analyze verify, promtool) on up to EXTERNAL accepted variants per
setting whose files differ from the default render, in one batch per setting."""

from __future__ import annotations

import errno
import itertools
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings as hsettings, strategies as st

from gatekit.defaults import DEFAULTS
from gatekit.roles import credentials
from gatekit.spec import BOUNDS, check_settings
from tests.unit import rendered, syntax
from tests.unit.rendered import FILES, layout, render_all  # noqa: F401 - render_all: test_spec_hostile imports it here

EXAMPLES = 30  # hypothesis examples per setting
EXTERNAL = 3  # accepted variants per setting checked with the real tools

# Characters and pieces that end a token, a line, a block or a quote somewhere among the rendered formats.
SPECIAL = [";", "{", "}", '"', "'", "\\", "$", "#", "%", " ", "\t", "\n", "\r", "\x00", "`", "*", "?", "[", "]", "(",
           ")", "<", ">", "|", "&", "=", ",", ":", "@", "!", "~", "\u2028", "\u202e", "é", "%i", "%%", "${x}", "$(id)",
           "..", "//", "\\\n", "'\"", "\n[Service]\nExecStart=/bin/sh", "\nuser x on", "\nlocation / {"]
HOSTILE = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["x; return 200", "x\nlocation / {", "a}b", "$(id)", "`id`", "a\"b", "a'b", "a\\b", "#x", " x",
                     "x\r\nY=1", "/etc/../etc", "/opt/x y", "\x00", "10m;", "_ x", "* ;", "", "%n", "100%", "*", ".",
                     "*.", "*_", "-", "0"]),
)


@st.composite
def near(draw, base: str):
    """`base` (a valid value) with a few edits: a special character inserted or replacing one, a character
    deleted, the case flipped, or cut short: values a validation can let through by a hair."""
    v = base
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(v)))
        op = draw(st.sampled_from(["insert", "replace", "delete", "case", "cut", "double"]))
        piece = draw(st.one_of(st.sampled_from(SPECIAL), st.characters(codec="utf-8")))
        if op == "insert":
            v = v[:i] + piece + v[i:]
        elif op == "replace":
            v = v[:i] + piece + v[i + 1:]
        elif op == "delete":
            v = v[:i] + v[i + 1:]
        elif op == "case":
            v = v.swapcase()
        elif op == "cut":
            v = v[:i]
        else:
            v = v + v[i:]
    return v


# A valid non-empty value where the default is empty (an optional line), and unusual values: valid, or not by a
# hair (what a reader of the file refuses that a validation could let through).
NON_EMPTY = {"nginx_tls_cert": "/etc/ssl/gw.pem", "nginx_tls_key": "/etc/ssl/gw.key",
             "litellm_prisma_engines_mirror": "https://mirror.example/prisma",
             "litellm_pip_index_url": "https://m.example/simple", "litellm_pip_find_links": "/srv/wheels"}
LONG_PATHS = ["/" + "a" * n for n in (200, 230, 236, 237, 240, 254)]
ODD = {
    "litellm_home": ["/opt/gk-2.x_y", "/srv/a", *LONG_PATHS],
    "litellm_config_dir": ["/etc/gk-2.x_y", *LONG_PATHS],
    "nginx_selfsigned_dir": ["/etc/gatekit/tls-2", *LONG_PATHS],
    "nginx_tls_cert": ["/etc/ssl/a-b_c.1.pem", *LONG_PATHS],
    "nginx_tls_key": ["/etc/ssl/a-b_c.1.key"],
    "nginx_server_name": ["gw.example.com *.example.com", "_", "a", ".example.com", "gw.", "*", "*_", ".", "*.", "*a"],
    "nginx_client_max_body_size": ["0", "1k", "20M", "1g", "999999999g"],
    "litellm_memory_high": ["1G", "100", "100B", "1024K", "1280m", "1280Mb", "1t", "0"],
    "litellm_memory_max": ["2G", "1536m", "2g", "2gb", "1536MB", "9999999999999999999", "0"],
    "redis_maxmemory": ["0", "1gb", "1GB", "100k", "999999999999"],
    "litellm_pip_index_url": ["http://10.0.0.1:8080/simple/", "https://[::1]/x", "https://a.example/%20x", "https://a/$x"],
    "litellm_pip_find_links": ["https://m.example/wheels", "/srv/wheels-2.x"],
    "litellm_prisma_engines_mirror": ["http://m.example:8080/a;b", "https://m.example/$x"],
    "litellm_requirements": ["requirements/litellm-db.lock", "requirements/litellm.lock"],
    "litellm_bind": ["127.0.0.2", "127.255.255.254"],
    "litellm_log_level": ["DEBUG", "CRITICAL"],
    "litellm_installer": ["pip"],
    "monitoring_retention": ["1y", "999999ms", "1w"],
    "postgres_db": ["_", "a" * 63], "postgres_user": ["_", "a" * 63],
}
NETS = ["10.0.0.0/24", "::1/128", "fd00::/8", "192.168.1.7/32"]
LIST_ITEMS = {"nginx_admin_allow": NETS, "litellm_egress_allow": NETS,
              "monitoring_alertmanagers": ["alerts.example.org:9093", "10.0.0.9:9093", "[fd00::1]:9093"]}
ENV_NAMES = ["OTEL_SERVICE_NAME", "HTTP_PROXY", "a", "_X1", "LITELLM_LOG", "GK_X", "1X", "A-B", "A B", "", "A=B"]


def strategy(key: str):
    default = DEFAULTS[key]
    if isinstance(default, bool):
        return st.booleans()
    if isinstance(default, int):
        low, high = BOUNDS.get(key, (0, 65535))
        return st.one_of(st.integers(), st.sampled_from([low, high, low - 1, high + 1, 0, -1, 2**31, 2**63, default]))
    if isinstance(default, float):
        low, high = BOUNDS.get(key, (0.0, 1.0))
        return st.one_of(st.floats(), st.floats(low, high), st.sampled_from([low, high, low / 2, 1e-300, 1e300]))
    if isinstance(default, str):
        base = NON_EMPTY.get(key, default)
        return st.one_of(HOSTILE, near(base), st.sampled_from(ODD.get(key, [base]) + [base]))
    if key == "litellm_ports":
        port = st.one_of(st.integers(1000, 70000), st.sampled_from([4000, 4001, 1023, 1024, 65535, 65536, 0]))
        return st.one_of(st.lists(port, min_size=1, max_size=6),
                         st.sampled_from([[4001, 4002], [1024, 65535], list(range(20000, 20016))]))
    if isinstance(default, list):
        items = LIST_ITEMS[key]
        item = st.one_of(HOSTILE, st.sampled_from(items), st.sampled_from(items).flatmap(near))
        return st.one_of(st.lists(item, min_size=1, max_size=3), st.just(items))
    name = st.one_of(st.sampled_from(ENV_NAMES), st.sampled_from(ENV_NAMES[:2]).flatmap(near))
    value = st.one_of(HOSTILE, near("gateway-1"), st.sampled_from(["a b", "x=y", "%i", "$HOME", "#x", 1, 2.5, True]))
    return st.one_of(st.dictionaries(name, value, min_size=1, max_size=3),
                     st.just({"OTEL_SERVICE_NAME": "gateway 1", "X": "a=b %i $HOME #x ;{}", "Y": 2.5}))


def plain(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9._/-]", "x", value)


def twin(key: str, value):
    """A value of the same shape with only plain characters: its render has the structure the hostile value's
    render must have (a special character replaced, never removed, keeps lengths and optional lines)."""
    if isinstance(value, str):
        return " ".join(plain(w) for w in value.split(" ")) if key == "nginx_server_name" else plain(value)
    if isinstance(value, list):
        return [twin(key, v) for v in value]
    if isinstance(value, dict):
        return {f"NAME{i}": plain(str(v)) for i, v in enumerate(value.values())}
    return value


DIRECTIVE = {"litellm_memory_max": "MemoryMax", "litellm_memory_high": "MemoryHigh"}


def with_setting(key: str, value) -> tuple[dict, dict]:
    """(the settings given, all settings): a TLS path comes with the other one of the pair."""
    given = {key: value}
    if key in ("nginx_tls_cert", "nginx_tls_key") and value:
        other = "nginx_tls_key" if key == "nginx_tls_cert" else "nginx_tls_cert"
        given[other] = NON_EMPTY[other]
    return given, {**DEFAULTS, **given}


_STRUCTURES: dict = {}


def structure(name: str, text: str):
    """syntax.structure of a rendered file, once per distinct text (most files do not change with a setting)."""
    if (name, text) not in _STRUCTURES:
        try:
            _STRUCTURES[(name, text)] = syntax.structure(FILES[name], text)
        except syntax.Broken as exc:
            _STRUCTURES[(name, text)] = exc
    found = _STRUCTURES[(name, text)]
    if isinstance(found, syntax.Broken):
        raise syntax.Broken(f"{name}: {found}")
    return found


SENTINEL = re.compile(r"@@(\w+)@@")


def sentinel_render(inputs: dict) -> tuple[str, dict]:
    """The template again, each string argument replaced by a sentinel: where each value lands, unescaped."""
    marked = {k: f"@@{k}@@" if isinstance(v, str) and k != "installer" else v for k, v in inputs.items() if k != "_name"}
    return rendered.render.template(inputs["_name"], **marked), inputs


def check_launcher(s: dict, text: str):
    """Python reads the launcher as the sentinel render, each value exactly as given (a quote or backslash in a
    path would change a string or end it), and the kernel finds its interpreter (the #! line and its newline in
    256 bytes, no space in the path: binfmt_script refuses a truncated interpreter)."""
    L = layout(s)
    with rendered.on_gateway():
        env_for = credentials.secrets_for_gateway(rendered.SimpleNamespace(settings=s, spec=rendered.SPEC))
        inputs = rendered.template_inputs(rendered.litellm_role, lambda: rendered.litellm_role.launcher(s, L, env_for, L.venv_build("f" * 64)))
    marked, _ = sentinel_render(inputs)
    tree, constants = syntax.python_shape(text)
    want_tree, want_constants = syntax.python_shape(marked)
    assert tree == want_tree, "launch.py: Python reads another program"
    expected = [SENTINEL.sub(lambda m: str(inputs[m.group(1)]), c) if isinstance(c, str) else c for c in want_constants]
    assert constants == expected, "launch.py: a value reads back otherwise"
    interpreter = text.split("\n", 1)[0]
    assert interpreter == f"#!{inputs['venv']}/bin/python3", interpreter
    assert len(interpreter.encode()) + 1 <= 256 and not re.search(r"\s", interpreter[2:]), \
        f"launch.py: the kernel cannot exec its interpreter line ({len(interpreter.encode())} bytes): {interpreter[:60]}..."


def check_script(s: dict, text: str):
    """bash parses the venv build script into the sentinel render's commands, each value a word as written."""
    L = layout(s)
    build = rendered.venv_build(L, s)
    inputs = rendered.template_inputs(rendered.venv_role, build.script)
    marked, _ = sentinel_render(inputs)
    parsed = structure("litellm/venv-install.sh", text)
    for k, v in sorted(((k, v) for k, v in inputs.items() if isinstance(v, str) and k not in ("_name", "installer")),
                       key=lambda kv: -len(kv[1])):
        parsed = parsed.replace(v, f"@@{k}@@") if v else parsed
    assert parsed == structure("litellm/venv-install.sh", marked), "venv-install.sh: bash reads other commands"
    for k, v in inputs.items():
        if isinstance(v, str) and k not in ("_name", "installer") and not re.fullmatch(r"[A-Za-z0-9._/=:-]*", v):
            assert _shell_words(v) == shlex.split(v), f"venv-install.sh: the shell reads {k} otherwise: {v!r}"


_WORDS: dict = {}


def _shell_words(text: str) -> list[str]:
    if text not in _WORDS:
        _WORDS[text] = syntax.shell_words(text, Path(_EMPTY_DIR.name))
    return _WORDS[text]


_EMPTY_DIR = tempfile.TemporaryDirectory(prefix="gatekit-words-")  # a glob in a word matches nothing there


def check_env(s: dict, text: str, twin_text: str):
    """systemd reads the environment file's lines as the twin's, and litellm_extra_env's values exactly."""
    pairs, twin_pairs = syntax.env_file(text), syntax.env_file(twin_text)
    extra = [(k, str(v)) for k, v in s["litellm_extra_env"].items()]
    n = len(twin_pairs) - len(extra)
    assert len(pairs) == len(twin_pairs) and [k for k, _ in pairs[:n]] == [k for k, _ in twin_pairs[:n]], (pairs, twin_pairs)
    assert pairs[n:] == extra, (pairs[n:], extra)


def check_accepted(key: str, s: dict, twin_s: dict) -> dict[str, str]:
    files, twins = render_all(s), render_all(twin_s)
    for name, text in files.items():
        # (litellm.env: its names differ from the twin's; venv-install.sh: bash's parse holds the values; both are
        # compared below, value by value)
        assert structure(name, text) == structure(name, twins[name]) or FILES[name] in ("env", "shell"), \
            f"{name}: another structure than with the plain twin {twin_s[key]!r}"
    check_env(s, files["litellm/litellm.env"], twins["litellm/litellm.env"])
    check_launcher(s, files["litellm/launch.py"])
    check_script(s, files["litellm/venv-install.sh"])
    return files


GROUPS = {"nginx": ("nginx/",), "systemd": ("systemd/",),
          "prometheus": ("monitoring/prometheus.yml", "monitoring/alerts.yml")}
DEFAULT_FILES = render_all(dict(DEFAULTS))


def changed_groups(files: dict) -> tuple[str, ...]:
    return tuple(g for g, prefixes in GROUPS.items()
                 if any(n.startswith(prefixes) and files[n] != DEFAULT_FILES[n] for n in files))


@pytest.fixture(scope="module")
def tls_pair(tmp_path_factory) -> tuple[Path, Path]:
    return syntax.self_signed_pair(tmp_path_factory.mktemp("tls"))


def specials(value) -> int:
    return len(re.findall(r"[^A-Za-z0-9._/-]", repr(value)))


@pytest.mark.parametrize("key", sorted(DEFAULTS))
def test_a_setting_is_refused_or_renders_as_intended(key, tls_pair, tmp_path):
    seen: list = []  # accepted values
    accepted: dict = {}  # rendered texts of the groups a variant changes -> (groups, value)

    @hsettings(max_examples=EXAMPLES, deadline=None,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
    @given(value=strategy(key))
    def one(value):
        given_, s = with_setting(key, value)
        problems = check_settings(given_, "spec.yaml")
        if problems:
            for p in problems:
                assert p.startswith("spec.yaml: settings.") and "Fix:" in p, p
                assert p.isprintable() and len(p.splitlines()) == 1, repr(p)
            # Each names the setting: at its place, or in the problem of a check of two settings (reported at the
            # other one, e.g. MemoryHigh must be below MemoryMax) by its name or the directive it sets.
            assert any(re.search(rf"\b({k}|{DIRECTIVE.get(k, k)})\b", p) for p in problems for k in given_), problems
            return
        files = check_accepted(key, s, {**s, key: twin(key, value)})
        seen.append(value)
        groups = changed_groups(files)
        if groups:
            checked = tuple(files[n] for n in sorted(files) if n.startswith(("nginx/", "systemd/", "monitoring/")))
            accepted.setdefault(checked, (groups, value))

    example(value=NON_EMPTY.get(key, DEFAULTS[key]))(one)()  # a valid value always runs: the render is checked
    assert seen, f"settings.{key}: no value was accepted, so no render was checked"
    chosen = sorted(accepted.values(), key=lambda gv: -specials(gv[1]))[:EXTERNAL]
    if chosen:
        groups = tuple(sorted({g for gs, _ in chosen for g in gs}))
        failures = rendered.external_checks([with_setting(key, v)[1] for _, v in chosen], tmp_path, tls_pair, groups)
        assert not failures, f"settings.{key}: accepted values the real tools refuse: " + "; ".join(
            f"{chosen[int(f.split(':')[0].split()[1])][1]!r}: {f}" for f in failures)


# ---- what the property found: values validation now refuses ----------------------------------------------


@pytest.mark.parametrize("key, value, refused", [
    ("litellm_memory_max", "2g", True), ("litellm_memory_max", "1536mb", True), ("litellm_memory_max", "1536MB", True),
    ("litellm_memory_max", "0", True), ("litellm_memory_high", "1280m", True), ("litellm_memory_high", "0", True),
    ("litellm_memory_max", "2G", False), ("litellm_memory_high", "1048576", False), ("litellm_memory_high", "1024K", False),
])
def test_a_memory_size_systemd_would_ignore_is_refused(key, value, refused, tmp_path):
    """systemd ignores a MemoryMax=/MemoryHigh= it cannot read (lowercase suffix, "mb", 0), leaving the instances
    without that limit: systemd-analyze verify says so, and validation refuses exactly those, in one line."""
    s = {**DEFAULTS, key: value}
    L = layout(s)
    paths = rendered.unit_paths(L)
    files = render_all(s)
    failures = syntax.systemd_verify([{"units": {paths[n]: files[n] for n in paths}, "verify": [L.instance(4001)],
                                       "executables": rendered.executables(L)}], tmp_path)
    assert bool(failures) == refused and all("memory limit" in f.lower() for f in failures), failures
    problems = check_settings({key: value}, "spec.yaml")
    if refused:
        assert problems == [f"spec.yaml: settings.{key}: {value!r} is not a size systemd reads (it would ignore the line: "
                            "the instances would run without that limit). Fix: digits, then K, M, G or T in capitals, "
                            f"above 0, like the default {DEFAULTS[key]}."]
    else:
        assert problems == []


def test_a_litellm_home_too_long_for_the_launchers_interpreter_line_is_refused(tmp_path):
    """The launcher starts with #!{litellm_home}/venv/bin/python3. The kernel runs a #! line only if it fits in
    256 bytes with its newline (an interpreter path of at most 253 bytes), seen here with a real exec; validation
    refuses a litellm_home past that, in one line."""
    for length, runs in ((253, True), (254, False)):
        d = tmp_path / str(length)
        d.mkdir()
        pad = length - len(f"{d}//python3")  # one directory of `pad` characters (tmp_path is short)
        assert 0 < pad < 256
        interpreter = f"{d}/{'a' * pad}/python3"
        Path(interpreter).parent.mkdir(parents=True, exist_ok=True)
        Path(interpreter).symlink_to(sys.executable)
        assert len(interpreter) == length, (len(interpreter), length)
        script = d / "launch"
        script.write_text(f"#!{interpreter}\nprint('ran')\n")
        script.chmod(0o755)
        if runs:
            assert subprocess.run([script], capture_output=True, text=True).stdout == "ran\n"
        else:
            with pytest.raises(OSError) as exc:
                subprocess.run([script], capture_output=True)
            assert exc.value.errno == errno.ENOEXEC
    limit = 253 - len("/venvs/0123456789abcdef/bin/python3")  # the launcher names its build: venvs/STAMP16
    assert check_settings({"litellm_home": "/" + "a" * (limit - 1)}, "spec.yaml") == []
    assert check_settings({"litellm_home": "/" + "a" * limit}, "spec.yaml") == [
        f"spec.yaml: settings.litellm_home: {limit + 1} characters; the kernel runs the launcher only if its interpreter "
        f"line (#!{{litellm_home}}/venvs/STAMP/bin/python3) fits in 256 bytes. Fix: a path of at most {limit} characters."]


def test_every_server_name_validation_accepts_is_one_nginx_takes(tls_pair, tmp_path):
    """Every server name of up to 3 characters from "a*._" that validation accepts passes nginx -t, and the ones
    the property found nginx refusing ("*_", "*", ".", "*a", "*.") are refused in one line."""
    names = sorted({"".join(p) for n in (1, 2, 3) for p in itertools.product("a*._", repeat=n)})
    accepted = [n for n in names if not check_settings({"nginx_server_name": n}, "spec.yaml")]
    assert {"a", "_", "*.a", "a.*", ".a", "a.", "a_a", "*.a a.*"} <= {*accepted, "*.a a.*"}
    variants = []
    for name in [*accepted, "*.a a.*"]:
        s = {**DEFAULTS, "nginx_server_name": name}
        L, files = layout(s), render_all(s)
        variants.append({"site": files["nginx/gatekit.conf"], "upstream": files["nginx/upstream.conf"],
                         "upstream_path": L.nginx_upstream, "tls": L.tls_pair, "log_dir": L.nginx_log_dir})
    assert syntax.nginx_check(variants, tmp_path, tls_pair) == []
    for name in ("*_", "*", ".", "*a", "*.", "a*b"):
        problems = check_settings({"nginx_server_name": name}, "spec.yaml")
        assert len(problems) == 1 and problems[0].startswith("spec.yaml: settings.nginx_server_name: "), problems


@pytest.mark.parametrize("cert, key, refused", [
    ("/etc/ssl", "/etc/ssl/gw.key", True),  # found by the property: the certificate "file" is the key's directory
    ("/etc", "/etc/ssl/gw.key", True), ("/var", "/etc/ssl/gw.key", True),
    ("/etc/ssl/gw.pem", "/etc/ssl/gw.pem/key", True),
    ("/etc/ssl/gw.pem", "/etc/ssl/gw.pem", False),  # one PEM file holding both: nginx reads it twice
    ("/srv/tls/gw.pem", "/srv/tls/gw.key", False),
])
def test_a_tls_path_that_is_a_directory_is_refused(cert, key, refused, tls_pair, tmp_path):
    problems = check_settings({"nginx_tls_cert": cert, "nginx_tls_key": key}, "spec.yaml")
    assert bool(problems) == refused, problems
    assert all(p.startswith("spec.yaml: settings.nginx_tls_") and "Fix:" in p for p in problems), problems
    if not refused:  # and what is accepted passes nginx -t
        s = {**DEFAULTS, "nginx_tls_cert": cert, "nginx_tls_key": key}
        assert rendered.external_checks([s], tmp_path, tls_pair, ("nginx",)) == []
