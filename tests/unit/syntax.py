"""Syntax checkers for every file gatekit renders: the real tool where one runs here, else a parser of the format.

Each checker returns what a reader of the format sees (its structure: directives, keys, words), or raises
Broken naming the file and the reason. The property test (test_hostile_settings.py) compares that structure
with the baseline render's; test_rendered_syntax.py shows each checker failing on a broken file.

Real tools: `nginx -t` (Debian's nginx and headers-more module, extracted into the venv by scripts/bootstrap),
`systemd-analyze verify` (offline, in a private --root), `promtool check config` (+ the rules beside it),
`sh -n` / `bash -n` (and bash's own parse, printed by `declare -f`), Python's compile(), PyYAML, json.
Parsers (no checking tool exists, or none runs here): systemd's EnvironmentFile= reader (a port of systemd
252's parse_env_file_internal), unit files' lines (sections, keys, continuations, % specifiers, Exec words),
redis.conf (a port of Redis' sdssplitargs: redis-server has no config check mode), postgresql.conf (the
lexer rules of guc-file.l) and pg_hba.conf (tokens of hba.c); running the servers would need their packages
installed and started.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

VENV_BIN = Path(sys.executable).parent
NGINX_DIR = VENV_BIN.parent / "nginx"
NGINX = NGINX_DIR / "nginx"
HEADERS_MORE = NGINX_DIR / "ngx_http_headers_more_filter_module.so"


class Broken(AssertionError):
    """A rendered file a reader of its format refuses, or reads otherwise than intended."""


def tool(path: Path | str) -> str:
    """A checker's program: scripts/bootstrap installs the missing ones; a missing one fails, never skips."""
    found = shutil.which(path) if isinstance(path, str) else (str(path) if path.exists() else None)
    if isinstance(path, str) and not found and (VENV_BIN / path).exists():
        found = str(VENV_BIN / path)
    assert found, f"{path} missing: run scripts/bootstrap"
    return found


def run(args: list[str], timeout: int = 120, **kw) -> subprocess.CompletedProcess:
    if "input" not in kw:
        kw["stdin"] = subprocess.DEVNULL
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kw)


# ---- YAML, JSON ------------------------------------------------------------------------------------------


def shape(value) -> object:
    """The structure of parsed data: mappings by key, lists by position, scalars by type."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(v) for v in value]
    return type(value).__name__


def yaml_shape(text: str) -> object:
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        raise Broken(f"YAML: {exc}") from None
    if len(docs) != 1:
        raise Broken(f"YAML: {len(docs)} documents, expected 1")
    return shape(docs[0])


def json_shape(text: str) -> object:
    try:
        return shape(json.loads(text))
    except ValueError as exc:
        raise Broken(f"JSON: {exc}") from None


# ---- nginx -----------------------------------------------------------------------------------------------


def nginx_statements(text: str) -> list[tuple]:
    """nginx's tokens as ngx_conf_read_token reads them: (depth, directive, number of arguments, ';' or '{', number
    of $ (variables) in its words), and ('}', depth) for a block's end."""
    out: list[tuple] = []
    words: list[str] = []
    depth, i, n = 0, 0, len(text)
    while i < n:
        c = text[i]
        if c in " \t\r\n":
            i += 1
        elif c == "#":
            while i < n and text[i] != "\n":
                i += 1
        elif c in ";{":
            if not words:
                raise Broken(f"nginx: unexpected {c!r} at offset {i}")
            out.append((depth, words[0], len(words) - 1, c, sum(w.count("$") for w in words)))
            words = []
            depth += c == "{"
            i += 1
        elif c == "}":
            if words:
                raise Broken(f"nginx: unexpected '}}' after {words[0]!r} (a directive without ';')")
            if depth == 0:
                raise Broken(f"nginx: unexpected '}}' at offset {i}")
            depth -= 1
            out.append(("}", depth))
            i += 1
        elif c in "\"'":
            j = i + 1
            while j < n and text[j] != c:
                j += 2 if text[j] == "\\" else 1
            if j >= n:
                raise Broken(f"nginx: unterminated {c} string at offset {i}")
            if j + 1 < n and text[j + 1] not in " \t\r\n;{":
                raise Broken(f"nginx: unexpected {text[j + 1]!r} after a quoted string at offset {j}")
            words.append(text[i + 1:j])
            i = j + 1
        else:
            j, var = i, False
            while j < n:
                ch = text[j]
                if ch == "\\":
                    j += 2
                    continue
                if var:
                    var = ch != "}"
                elif ch == "$" and j + 1 < n and text[j + 1] == "{":
                    var = True
                    j += 1
                elif ch in " \t\r\n;{}" or (ch in "\"'" and j == i):
                    break
                j += 1
            words.append(text[i:j])
            i = j
    if words:
        raise Broken(f"nginx: unexpected end of file after {words[0]!r} (a directive without ';')")
    if depth:
        raise Broken("nginx: unexpected end of file, expecting '}'")
    return out


# Directives that open a file: nginx -t opens them, so their absolute paths are moved into the check's root.
_FILE_DIRECTIVES = re.compile(r"^([ \t]*(?:include|ssl_certificate|ssl_certificate_key|access_log|error_log)[ \t])(.*)$",
                              re.M)


def rooted(text: str, root: str) -> str:
    """`text` with the absolute paths its file directives open moved under `root` (a plain prefix: the
    words and their number stay as they are)."""
    return _FILE_DIRECTIVES.sub(lambda m: m.group(1) + re.sub(r"(?<![^ \t])/", root + "/", m.group(2)), text)


def nginx_check(variants: list[dict], workdir: Path, tls_pair: tuple[Path, Path]) -> list[str]:
    """`nginx -t` of each variant: {"site": text, "upstream": text, "upstream_path": path, "tls": (cert, key),
    "log_dir": path}. Each in a root of its own under `workdir`: the rendered site is included in a minimal main
    config whose pid, lock, logs and temporary paths are all in that root, and its file directives' absolute
    paths are moved under it, so no file outside workdir is written. `nginx -t` binds the listen addresses (it
    opens the listening sockets to check them): it runs in a network namespace of its own, where binding any
    address is allowed (ip_nonlocal_bind) and nothing is reachable. Returns one failure per broken variant."""
    nginx, module = tool(NGINX), tool(HEADERS_MORE)
    script = ["echo 1 > /proc/sys/net/ipv4/ip_nonlocal_bind && echo 1 > /proc/sys/net/ipv6/ip_nonlocal_bind || exit 1"]
    roots = []
    for k, v in enumerate(variants):
        root = workdir / f"nginx{k}"
        root.mkdir(parents=True)
        r = str(root)
        roots.append(root)
        p = Path(r + v["upstream_path"])
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(v["upstream"])
        for rel in dict.fromkeys(v["tls"]):  # one path for both: a PEM file holding the certificate and the key
            p = Path(r + rel)
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(b"".join(src.read_bytes() for path, src in zip(v["tls"], tls_pair) if path == rel))
        Path(r + v["log_dir"]).mkdir(parents=True, exist_ok=True)
        (root / "tmp").mkdir()
        (root / "site.conf").write_text(rooted(v["site"], r))
        temp = "\n".join(f"    {d}_temp_path {r}/tmp/{d};" for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        (root / "nginx.conf").write_text(
            f"load_module {module};\npid {r}/nginx.pid;\nlock_file {r}/nginx.lock;\nerror_log {r}/error.log;\n"
            f"events {{}}\nhttp {{\n    access_log {r}/access.log;\n{temp}\n    include {r}/site.conf;\n}}\n")
        q = shlex.quote
        script.append(f"{q(nginx)} -t -q -p {q(r + '/')} -e {q(r + '/error.log')} -c {q(r + '/nginx.conf')} "
                      f">{q(r + '/check.out')} 2>&1; echo $? >{q(r + '/check.rc')}")
    (workdir / "nginx-check.sh").write_text("\n".join(script) + "\n")
    p = run(["unshare", "--net", "sh", str(workdir / "nginx-check.sh")], timeout=600)
    assert p.returncode == 0, f"unshare --net: {p.stderr}"
    failures = []
    for k, root in enumerate(roots):
        rc, out = (root / "check.rc").read_text().strip(), (root / "check.out").read_text().strip()
        if rc != "0" or out:
            failures.append(f"variant {k}: nginx -t exit {rc}: {out}")
    return failures


# ---- systemd units ---------------------------------------------------------------------------------------

_SECTION = re.compile(r"\[([A-Za-z]+)\]")
_KEY = re.compile(r"([A-Za-z][A-Za-z0-9]*)[ \t]*=(.*)")
_WORDS = ("Exec", "Environment", "LoadCredential")


def unit_lines(text: str) -> list[tuple]:
    """A unit file as systemd's config parser reads it: (section, key, words, specifiers) per assignment,
    where `words` is the number of words of an Exec*/Environment= value (None for other keys) and
    `specifiers` the % specifiers it holds (and the $ expansions of an Exec line). Refused: a line continuation
    (none of the kit's units has one), a line outside a section, a line that is no assignment, an unknown or unbalanced specifier or quote."""
    out, section = [], None
    for no, line in enumerate(text.split("\n"), 1):
        stripped = line.strip(" \t\r")
        if not stripped or stripped[0] in "#;":
            continue
        if stripped.endswith("\\"):
            raise Broken(f"unit line {no}: a line continuation joins the next line: {line!r}")
        m = _SECTION.fullmatch(stripped)
        if m:
            section = m.group(1)
            continue
        m = _KEY.fullmatch(stripped)
        if not m or section is None:
            raise Broken(f"unit line {no}: not a Key=value line in a section: {line!r}")
        key, value = m.group(1), m.group(2).strip(" \t")
        specifiers = re.findall(r"%.?", value)
        if any(s == "%" or not s[1].isalpha() and s != "%%" for s in specifiers):
            raise Broken(f"unit line {no}: a bad % specifier in {value!r} (a literal % is %%)")
        if key.startswith("Exec"):  # systemd expands $NAME and ${NAME} in a command's arguments ($$ is a $)
            specifiers += re.findall(r"\$\$|\$\{?\w*", value)
        words = None
        if key.startswith(_WORDS):
            try:
                words = len(shlex.split(value.lstrip("-@:+!")))
            except ValueError as exc:
                raise Broken(f"unit line {no}: {exc} in {value!r}") from None
        out.append((section, key, words, tuple(specifiers)))
    return out


_STUB_TARGETS = ("sysinit.target", "basic.target", "shutdown.target")


def systemd_verify(variants: list[dict], workdir: Path) -> list[str]:
    """`systemd-analyze verify` of each variant: {"units": {unit file path: text}, "verify": [unit names],
    "executables": [paths its Exec lines may name]}, offline in a private --root (no man pages, no generators):
    the units are written under it with stub targets and stub executables at the expected paths only, so any
    line systemd refuses or ignores, and any command it cannot find, is reported. A packaged unit a drop-in
    extends gets a stub. Returns one failure per broken variant."""
    analyze = tool("systemd-analyze")
    failures = []
    for k, v in enumerate(variants):
        root = workdir / f"systemd{k}"
        system = root / "etc/systemd/system"
        system.mkdir(parents=True)
        for name in _STUB_TARGETS:
            (system / name).write_text(f"[Unit]\nDescription=stub {name}\n")
        for path in v["executables"]:
            p = Path(str(root) + path)
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text("#!/bin/sh\n")
            p.chmod(0o755)
        for path, text in v["units"].items():
            p = Path(str(root) + path)
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text)
            if p.parent.name.endswith(".d"):
                base = p.parent.parent / p.parent.name[:-2]
                if not base.exists():
                    stub = root / "usr/bin/stub-daemon"
                    stub.parent.mkdir(parents=True, exist_ok=True)
                    stub.write_text("#!/bin/sh\n")
                    stub.chmod(0o755)
                    base.write_text(f"[Unit]\nDescription=packaged {base.name}\n[Service]\n"
                                    "EnvironmentFile=-/etc/default/stub\nExecStart=/usr/bin/stub-daemon $ARGS\n")
        p = run([analyze, "verify", "--man=no", "--generators=no", f"--root={root}", *v["verify"]],
                env={**os.environ, "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_PAGER": ""})
        if p.returncode or p.stdout.strip() or p.stderr.strip():
            failures.append(f"variant {k}: systemd-analyze verify exit {p.returncode}: {(p.stderr + p.stdout).strip()}")
    return failures


# ---- systemd EnvironmentFile= ----------------------------------------------------------------------------


def env_file(text: str) -> list[tuple[str, str]]:
    """(name, value) pairs as systemd reads an EnvironmentFile= (env_pairs). Refused here: a quote, an escape or
    a line continuation (the kit writes plain NAME=value lines, read back as written), and an assignment
    systemd would drop (no variable name, a control character)."""
    pairs, tricky = env_pairs(text)
    if tricky:
        raise Broken(f"environment file: {''.join(sorted(set(tricky)))!r} read as a quote or escape by systemd")
    for k, v in pairs:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k):
            raise Broken(f"environment file: {k!r} is no variable name; systemd drops the assignment")
        if any(not ch.isprintable() and ch != "\t" for ch in v):
            raise Broken(f"environment file: {k}: a control character systemd refuses")
    return pairs


def env_pairs(text: str) -> tuple[list[tuple[str, str]], list[str]]:
    """(name, value) pairs as systemd 252 reads an EnvironmentFile= (a port of parse_env_file_internal in
    src/basic/env-file.c: comments, quotes, backslash escapes and continuations, trailing whitespace), and the
    quote and escape characters it interpreted."""
    PRE_KEY, KEY, PRE_VALUE, VALUE, VALUE_ESCAPE, SQ, DQ, DQ_ESCAPE, COMMENT, COMMENT_ESCAPE = range(10)
    state, key, value, pairs = PRE_KEY, "", None, []
    key_ws = value_ws = None
    tricky = []

    def push():
        k = key if key_ws is None else key[:key_ws]
        pairs.append((k, value if value is not None else ""))

    for c in text:
        if state == PRE_KEY:
            if c in "#;":
                state = COMMENT
            elif c not in " \t\n\r":
                state, key, key_ws = KEY, c, None
        elif state == KEY:
            if c in "\n\r":
                state, key = PRE_KEY, ""
            elif c == "=":
                state, value_ws = PRE_VALUE, None
            else:
                if c not in " \t\n\r":
                    key_ws = None
                elif key_ws is None:
                    key_ws = len(key)
                key += c
        elif state == PRE_VALUE:
            if c in "\n\r":
                push()
                state, key, value = PRE_KEY, "", None
            elif c in "'\"\\":
                tricky.append(c)
                state = {"'": SQ, '"': DQ, "\\": VALUE_ESCAPE}[c]
            elif c not in " \t\n\r":
                state, value = VALUE, c
        elif state == VALUE:
            if c in "\n\r":
                if value_ws is not None:
                    value = value[:value_ws]
                push()
                state, key, value = PRE_KEY, "", None
            elif c == "\\":
                tricky.append(c)
                state, value_ws = VALUE_ESCAPE, None
            else:
                if c not in " \t\n\r":
                    value_ws = None
                elif value_ws is None:
                    value_ws = len(value or "")
                value = (value or "") + c
        elif state == VALUE_ESCAPE:
            state = VALUE
            if c not in "\n\r":
                value = (value or "") + c
        elif state == SQ:
            if c == "'":
                state = PRE_VALUE
            else:
                value = (value or "") + c
        elif state == DQ:
            if c == '"':
                state = PRE_VALUE
            elif c == "\\":
                state = DQ_ESCAPE
            else:
                value = (value or "") + c
        elif state == DQ_ESCAPE:
            state = DQ
            if c in "\"\\`$":
                value = (value or "") + c
            elif c != "\n":
                value = (value or "") + "\\" + c
        elif state == COMMENT:
            if c == "\\":
                state = COMMENT_ESCAPE  # systemd 252: a comment ending in a backslash swallows the next line
            elif c in "\n\r":
                state = PRE_KEY
        elif state == COMMENT_ESCAPE:
            state = COMMENT
    if state in (PRE_VALUE, VALUE, VALUE_ESCAPE, SQ, DQ, DQ_ESCAPE):
        if state == VALUE and value_ws is not None:
            value = value[:value_ws]
        push()
    if state in (SQ, DQ, DQ_ESCAPE):
        raise Broken("environment file: an unterminated quote")
    return pairs, tricky


# ---- Redis, PostgreSQL -----------------------------------------------------------------------------------


def redis_args(line: str) -> list[str]:
    """A port of Redis' sdssplitargs (how redis.conf lines are split): quotes, escapes, and a closing quote
    that must be followed by a space or the end."""
    args, i, n = [], 0, len(line)
    while True:
        while i < n and line[i] in " \n\r\t\f\v":
            i += 1
        if i >= n:
            return args
        cur, inq, insq = "", False, False
        while True:
            if inq:
                if i >= n:
                    raise Broken(f"redis: unbalanced quotes in {line!r}")
                if line[i] == "\\" and i + 3 < n and line[i + 1] == "x" and all(ch in "0123456789abcdefABCDEF"
                                                                              for ch in line[i + 2:i + 4]):
                    cur += chr(int(line[i + 2:i + 4], 16))
                    i += 3
                elif line[i] == "\\" and i + 1 < n:
                    cur += {"n": "\n", "r": "\r", "t": "\t", "b": "\b", "a": "\a"}.get(line[i + 1], line[i + 1])
                    i += 1
                elif line[i] == '"':
                    if i + 1 < n and line[i + 1] not in " \n\r\t\f\v":
                        raise Broken(f"redis: a closing quote must be followed by a space in {line!r}")
                    i += 1
                    break
                else:
                    cur += line[i]
            elif insq:
                if i >= n:
                    raise Broken(f"redis: unbalanced quotes in {line!r}")
                if line[i] == "\\" and i + 1 < n and line[i + 1] == "'":
                    cur += "'"
                    i += 1
                elif line[i] == "'":
                    if i + 1 < n and line[i + 1] not in " \n\r\t\f\v":
                        raise Broken(f"redis: a closing quote must be followed by a space in {line!r}")
                    i += 1
                    break
                else:
                    cur += line[i]
            else:
                if i >= n or line[i] in " \n\r\t\0":
                    break
                if line[i] == '"':
                    inq = True
                elif line[i] == "'":
                    insq = True
                else:
                    cur += line[i]
            i += 1
        args.append(cur)


def redis_directives(text: str) -> list[tuple[str, int]]:
    """redis.conf as Redis' config loader reads it: (directive, number of arguments) per line."""
    out = []
    for line in text.split("\n"):
        line = line.strip(" \t\r\n")
        if not line or line.startswith("#"):
            continue
        args = redis_args(line)
        out.append((args[0].lower(), len(args) - 1))
    return out


_PG_LINE = re.compile(r"[ \t\f]*(?P<name>[A-Za-z_][A-Za-z0-9_$]*(?:\.[A-Za-z_][A-Za-z0-9_$]*)?)[ \t\f]*=?[ \t\f]*"
                      r"(?P<value>'(?:[^'\\\n]|\\.|'')*'|[A-Za-z0-9_.:/+-]+)[ \t\f]*(?:#.*)?")


def postgres_settings(text: str) -> list[str]:
    """postgresql.conf as guc-file.l reads it: the names set, one `name [=] value` per line (value: a quoted
    string with '' or backslash escapes, a number, or an unquoted word)."""
    out = []
    for no, line in enumerate(text.split("\n"), 1):
        if not line.strip(" \t\r\f") or line.lstrip(" \t\f").startswith("#"):
            continue
        m = _PG_LINE.fullmatch(line.rstrip("\r"))
        if not m:
            raise Broken(f"postgresql.conf line {no}: syntax error in {line!r}")
        out.append(m.group("name").lower())
    return out


def pg_hba_records(text: str) -> list[tuple[str, ...]]:
    """pg_hba.conf as hba.c tokenizes it: per record its type and the number of tokens in each field
    (commas separate a field's items; double quotes keep spaces, commas and # inside a token)."""
    out = []
    for no, line in enumerate(text.split("\n"), 1):
        if line.rstrip().endswith("\\"):
            raise Broken(f"pg_hba.conf line {no}: a line continuation")
        fields, cur, items, inq, i = [], "", [], False, 0
        while i < len(line):
            c = line[i]
            if inq:
                if c == '"':
                    inq = False
                else:
                    cur += c
            elif c == '"':
                inq = True
            elif c == "#":
                break
            elif c in " \t\r":
                if cur or items:
                    fields.append(items + [cur])
                    cur, items = "", []
            elif c == ",":
                items.append(cur)
                cur = ""
            else:
                cur += c
            i += 1
        if inq:
            raise Broken(f"pg_hba.conf line {no}: unterminated quote")
        if cur or items:
            fields.append(items + [cur])
        if fields:
            out.append((fields[0][0], *(str(len(f)) for f in fields[1:])))
    for rec in out:
        if rec[0] not in ("local", "host", "hostssl", "hostnossl", "hostgssenc", "hostnogssenc"):
            raise Broken(f"pg_hba.conf: {rec[0]!r} is no connection type")
    return out


# ---- Prometheus ------------------------------------------------------------------------------------------


def promtool_check(variants: list[dict], workdir: Path) -> list[str]:
    """`promtool check config` of each variant ({"config": text, "rules": text, "rules_path": path the config
    names}): the rules file is written where the config names it, under the check's directory (the config is
    rendered with a layout there), so promtool checks both."""
    promtool = tool("promtool")
    failures = []
    for k, v in enumerate(variants):
        d = workdir / f"prometheus{k}"
        d.mkdir(parents=True)
        rules = Path(v["rules_path"])
        assert str(rules).startswith(str(workdir)), rules  # never a file outside the check's directory
        rules.parent.mkdir(parents=True, exist_ok=True)
        rules.write_text(v["rules"])
        (d / "prometheus.yml").write_text(v["config"])
        p = run([promtool, "check", "config", str(d / "prometheus.yml")])
        if p.returncode or "SUCCESS" not in p.stdout or "FAILED" in p.stdout + p.stderr:
            failures.append(f"variant {k}: promtool check config exit {p.returncode}: {(p.stdout + p.stderr).strip()}")
    return failures


# ---- Python, shell ---------------------------------------------------------------------------------------


def python_shape(text: str, name: str = "<rendered>") -> tuple[str, list]:
    """A Python program as the interpreter reads it: compile() (syntax errors), its tree with every constant
    replaced by its type, and the constants (each value, exactly as Python reads it)."""
    try:
        compile(text, name, "exec")
        tree = ast.parse(text)
    except SyntaxError as exc:
        raise Broken(f"Python: {exc}") from None
    constants = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant):
            constants.append(node.value)
            node.value = type(node.value).__name__
    return ast.dump(tree), constants


def shell_parse(text: str) -> str:
    """A shell script as the shells read it: `sh -n` (dash, its #!/bin/sh) and `bash -n` refuse syntax errors;
    bash's own parse of it, printed back by `declare -f` (one normalized command per line), is returned for
    comparison. Nothing in the script runs: it is only a function's body, never called."""
    for sh in ("sh", "bash"):
        p = run([tool(sh), "-n"], input=text)
        if p.returncode or p.stderr.strip():
            raise Broken(f"{sh} -n: {p.stderr.strip()}")
    # A restricted bash with no PATH: even a script that closed the function early could run no program.
    p = run([tool("bash"), "--norc", "--noprofile", "-r", "-c", 'eval "gatekit_script() {\n$1\n}" && declare -f gatekit_script',
             "bash", text], env={"PATH": "/nonexistent"})
    if p.returncode or p.stderr.strip():
        raise Broken(f"bash: {p.stderr.strip()}")
    return p.stdout


# ---- one file's structure, by format ---------------------------------------------------------------------

STRUCTURE = {
    "yaml": yaml_shape,
    "json": json_shape,
    "nginx": nginx_statements,
    "unit": unit_lines,
    "env": lambda text: [k for k, _ in env_file(text)],
    "redis": redis_directives,
    "postgres": postgres_settings,
    "pg_hba": pg_hba_records,
    "python": lambda text: python_shape(text)[0],
    "shell": shell_parse,
}


def structure(fmt: str, text: str) -> object:
    """What a reader of format `fmt` sees of `text` (Broken if it refuses it). A control character other than
    a line break or tab is refused in every format: no reader of these files expects one."""
    bad = re.search(r"[\x00-\x08\x0b-\x1f\x7f\u2028\u2029\x85]", text)
    if bad:
        raise Broken(f"a control character {bad.group()!r} at offset {bad.start()}")
    return STRUCTURE[fmt](text)


def self_signed_pair(d: Path) -> tuple[Path, Path]:
    """A throwaway certificate and key for nginx -t (it loads them)."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "gatekit-test")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=2)).sign(key, hashes.SHA256()))
    (d / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    return d / "cert.pem", d / "key.pem"


def shell_words(text: str, cwd: Path) -> list[str]:
    """The words the shell makes of `text` as written into a command line (quotes removed, $ and backquote
    expansions, globs, splitting) in a restricted bash with no PATH in the empty directory `cwd`: printf is a
    builtin, so no program runs."""
    p = run([tool("bash"), "--norc", "--noprofile", "-r", "-c", f"printf '%s\\0' _ {text}"], env={"PATH": "/nonexistent"},
            cwd=cwd, timeout=10)
    if p.returncode:
        raise Broken(f"bash: {p.stderr.strip()}")
    return p.stdout.split("\0")[1:-1]
