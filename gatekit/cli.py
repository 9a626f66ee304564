"""gatekit command line: `main` is the root group; `gatekit secrets ...` manages the vault."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import click
import yaml

from gatekit import vault
from gatekit.spec import SpecError
from gatekit.vault import USAGE, VaultError


class _Group(click.Group):
    """Errors become one `error: ...` line on stderr and an exit code, never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except VaultError as e:
            _fail(str(e), e.exit_code)
        except SpecError as e:
            for problem in e.problems[:-1]:
                click.echo(f"error: {problem}", err=True)
            _fail(e.problems[-1], 2)
        except OSError as e:
            _fail(str(e), 1)
        except Exception as e:
            if os.environ.get("GATEKIT_DEBUG"):
                raise
            # Only the type: an arbitrary exception message might quote secret material.
            _fail(f"internal error ({type(e).__name__}); rerun with GATEKIT_DEBUG=1 for a traceback", 1)


def _fail(message: str, code: int):
    click.echo(f"error: {message}", err=True)
    raise click.exceptions.Exit(code)


@click.group(cls=_Group)
def main():
    """gatekit: provision an LLM gateway."""


@main.group()
def secrets():
    """Encrypted secrets vault (one file per environment)."""


_path = click.Path(dir_okay=False, path_type=Path)
_vault_opt = click.option(
    "--vault", "vault_path", required=True, type=_path, help="Vault file, e.g. inventories/prod/secrets.enc.yaml."
)
_key_opt = click.option(
    "--key-file",
    type=_path,
    help="Key file [env GATEKIT_VAULT_KEY_FILE]; without one, the passphrase from "
    "GATEKIT_VAULT_PASSPHRASE or a prompt.",
)


def _new_passphrase(env_name: str) -> str:
    value = os.environ.get(env_name)
    if value:
        return value
    if sys.stdin.isatty():
        return click.prompt("new passphrase", hide_input=True, confirmation_prompt=True, err=True)
    raise VaultError(f"no passphrase: set {env_name} (or run on a terminal to be prompted)", USAGE)


@secrets.command()
@_vault_opt
@click.option("--key-file", type=_path, help="Key file to use, created (0600) if missing [env GATEKIT_VAULT_KEY_FILE].")
@click.option("--passphrase-env", is_flag=True, help="Derive the key from GATEKIT_VAULT_PASSPHRASE (or a prompt).")
def init(vault_path: Path, key_file: Path | None, passphrase_env: bool):
    """Create an empty vault (and its key file)."""
    if key_file and passphrase_env:
        raise VaultError("--key-file and --passphrase-env are mutually exclusive", USAGE)
    passphrase = _new_passphrase("GATEKIT_VAULT_PASSPHRASE") if passphrase_env else None
    if not passphrase_env and key_file is None and os.environ.get("GATEKIT_VAULT_KEY_FILE"):
        key_file = Path(os.environ["GATEKIT_VAULT_KEY_FILE"])
    new_key_file = key_file is not None and not key_file.exists()
    key = vault.init_vault(vault_path, key_file, passphrase)
    click.echo(f"created {vault_path} (key id {vault.key_id(key)})")
    if new_key_file:
        click.echo(f"created key file {key_file}: keep it out of git and back it up")


def _read_value(name: str) -> str:
    if sys.stdin.isatty():
        value = click.prompt(f"value for {name}", hide_input=True, err=True)
    else:
        try:
            value = sys.stdin.buffer.read().decode("utf-8")
        except UnicodeDecodeError:
            raise VaultError("the value on stdin is not valid UTF-8", USAGE) from None
        # Exactly one newline: `echo value |` adds it, anything more is part of the value.
        value = value[:-2] if value.endswith("\r\n") else value.removesuffix("\n")
    if not value:
        raise VaultError(f"empty value for {name}: pipe it on stdin, e.g. `printf %s \"$VALUE\" | gatekit secrets set`")
    return value


@secrets.command("set")
@click.argument("name")
@click.argument("extra", nargs=-1, metavar="")
@_vault_opt
@_key_opt
def set_cmd(name: str, extra: tuple[str, ...], vault_path: Path, key_file: Path | None):
    """Set NAME to the value read from stdin (never from the command line)."""
    if extra:
        # Not echoed (click would): an extra argument is most likely the value itself.
        raise VaultError("secrets set takes the value on stdin, never as an argument (it would sit in the shell "
                         "history and the process list): printf %s \"$VALUE\" | gatekit secrets set NAME", USAGE)
    vault._check_name(name)
    key = vault.resolve_key(vault_path, key_file)
    changed = vault.set_secret(vault_path, key, name, _read_value(name))
    click.echo(f"{name}: {'updated' if changed else 'unchanged'} in {vault_path}")


@secrets.command()
@click.argument("name")
@_vault_opt
@_key_opt
def get(name: str, vault_path: Path, key_file: Path | None):
    """Print the value of NAME."""
    value = vault.get_secret(vault_path, vault.resolve_key(vault_path, key_file), name)
    click.echo(value.encode())  # bytes: the value comes out exactly, whatever the locale


@secrets.command("list")
@_vault_opt
def list_cmd(vault_path: Path):
    """List secret names (no key needed)."""
    for name in vault.list_names(vault_path):
        click.echo(name)


@secrets.command("verify")
@_vault_opt
@_key_opt
def verify_cmd(vault_path: Path, key_file: Path | None):
    """Check the MAC and that every value decrypts."""
    key = vault.resolve_key(vault_path, key_file)
    count = vault.verify(vault_path, key)
    click.echo(f"ok: {count} secrets, key id {vault.key_id(key)}")


@secrets.command("rekey")
@_vault_opt
@_key_opt
@click.option(
    "--new-key-file", type=_path, help="New key file, created (0600) if missing; else GATEKIT_VAULT_NEW_PASSPHRASE."
)
def rekey_cmd(vault_path: Path, key_file: Path | None, new_key_file: Path | None):
    """Re-encrypt every secret under a new key."""
    old_key = vault.resolve_key(vault_path, key_file)
    vault.verify(vault_path, old_key)  # fail on a wrong key before asking for a new passphrase
    new_passphrase = None if new_key_file else _new_passphrase("GATEKIT_VAULT_NEW_PASSPHRASE")
    new_key = vault.rekey(vault_path, old_key, new_key_file, new_passphrase)
    click.echo(f"rekeyed {vault_path}: key id {vault.key_id(old_key)} -> {vault.key_id(new_key)}")


# --- edit ------------------------------------------------------------------


def dump_plain(values: dict[str, str]) -> str:
    """One `name: value` per secret, readable where PyYAML round-trips the value; otherwise
    double-quoted with escapes (PyYAML folds e.g. NEL or U+2028 in its other styles)."""
    out = []
    for name, value in sorted(values.items()):
        entry = yaml.safe_dump({name: value}, allow_unicode=True, width=2**31)
        if yaml.safe_load(entry) != {name: value}:
            entry = yaml.safe_dump({name: value}, allow_unicode=True, width=2**31, default_style='"')
        out.append(entry)
    return "".join(out)


def parse_plain(text: str) -> dict[str, str]:
    """The edited `name: value` mapping. Errors give positions only: the text holds secrets."""
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise VaultError(f"edited text is not valid YAML{where}", USAGE) from None
    except Exception:
        raise VaultError("edited text is not valid YAML", USAGE) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise VaultError("edited text must be a mapping of `name: value` lines", USAGE)
    for name, value in data.items():
        vault._check_name(name)
        if not isinstance(value, str):
            raise VaultError(f"value of {name!r} must be a string: put it in quotes", USAGE)
    return data


def _shred_tree(root: Path) -> None:
    """Overwrite then delete everything the editor left (incl. swap/backup files)."""
    for dirpath, _, files in os.walk(root):
        for fname in files:
            path = os.path.join(dirpath, fname)
            with contextlib.suppress(OSError):
                size = os.lstat(path).st_size
                with open(path, "r+b") as f:
                    f.write(b"\0" * size)
                    f.flush()
                    os.fsync(f.fileno())
    shutil.rmtree(root, ignore_errors=True)


def _run_editor(path: Path) -> None:
    argv = shlex.split(os.environ.get("EDITOR") or "vi") + [str(path)]
    try:
        status = subprocess.run(argv).returncode
    except FileNotFoundError:
        raise VaultError(f"editor {argv[0]!r} not found: set $EDITOR", USAGE) from None
    if status != 0:
        raise VaultError(f"editor exited with status {status}", USAGE)


@secrets.command("edit")
@_vault_opt
@_key_opt
def edit_cmd(vault_path: Path, key_file: Path | None):
    """Edit all secrets in $EDITOR as `name: value` YAML."""
    key = vault.resolve_key(vault_path, key_file)
    current = vault.read_secrets(vault_path, key)
    # Plaintext goes to RAM (/dev/shm) when possible, in a 0700 dir so editor swap files are private too.
    shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    tmpdir = Path(tempfile.mkdtemp(prefix="gatekit-edit-", dir=shm))
    try:
        path = tmpdir / "secrets.yaml"
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w", encoding="utf-8") as f:
            f.write(f"# {vault_path}: one `name: value` per line; delete a line to remove a secret.\n")
            f.write(dump_plain(current))
        _run_editor(path)
        try:
            edited = parse_plain(path.read_bytes().decode("utf-8"))
        except UnicodeDecodeError:
            raise VaultError("edited text is not valid UTF-8", USAGE) from None
    except VaultError as e:
        raise VaultError(f"{e}; {vault_path} unchanged", e.exit_code) from None
    finally:
        _shred_tree(tmpdir)
    added, changed, removed = vault.update_secrets(vault_path, key, edited)
    click.echo(f"{vault_path}: {len(added)} added, {len(changed)} changed, {len(removed)} removed")


# ---- validate ------------------------------------------------------------------------------------
@main.command()
@click.argument("spec", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--no-secrets", is_flag=True, help="Skip checking that referenced secrets exist in the vault.")
def validate(spec: Path, no_secrets: bool):
    """Validate a gateway spec (what every deploy does before touching a host)."""
    from gatekit.spec import SpecError, load_spec

    try:
        parsed = load_spec(spec, check_secrets=not no_secrets)
    except SpecError as exc:
        for problem in exc.problems:
            click.echo(f"error: {problem}", err=True)
        raise click.exceptions.Exit(2) from None
    deployments = sum(len(m.deployments) for m in parsed.models)
    click.echo(f"ok: {spec}: {len(parsed.models)} models, {deployments} deployments, {len(parsed.fallbacks)} fallbacks")


# ---- client keys --------------------------------------------------------------------------------
@main.group()
def keys():
    """Client keys: made here and shown once; only hashes and limits are kept (beside the spec)."""


def _refuse(message: str):
    """A refusal: the single `error: ...` line, exit 2 (line breaks in what the user typed escaped)."""
    raise SpecError([message.replace("\n", "\\n").replace("\r", "\\r")])


_spec_opt = click.option("--spec", "spec_path", required=True, type=_path, help="The gateway spec, e.g. inventories/prod.gateway.yaml.")


def _spec_and_keys(spec_path: Path):
    from gatekit.clientkeys import load_keys
    from gatekit.spec import load_spec

    spec = load_spec(spec_path, check_secrets=False)  # raises SpecError (spec or keys file)
    return spec, load_keys(spec)


def _models_option(value: str, spec) -> list[str]:
    models = [m.strip() for m in value.split(",") if m.strip()]
    if not models:
        _refuse("--models: give at least one model, e.g. --models fast,smart")
    known = {m.name for m in spec.models} | set(spec.aliases)
    unknown = [m for m in models if m not in known]
    if unknown:
        _refuse(f"--models: {', '.join(repr(u[:80]) for u in unknown)} not in {spec.path}. "
                               f"Fix: use one of {', '.join(sorted(known))}.")
    return list(dict.fromkeys(models))


def _hand_out(key: str, name: str, out: Path | None) -> None:
    """Show a new key once: on stdout alone (for scripts), or in --out FILE created 0600. Nothing is stored
    yet: when this fails, the command ends here with one error line."""
    if out is None:
        try:
            click.echo(key)  # and flushed: a closed pipe or a full disk fails here
        except OSError as exc:
            _fail(f"stdout: the new key for {name} could not be written ({exc.strerror or type(exc).__name__}); "
                  "nothing was stored. Fix: run the command again with stdout open, or with --out FILE.", 1)
        click.echo(f"{name}: this key is shown once; it is not stored anywhere.", err=True)
        return
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        _fail(f"{out}: --out: cannot write the new key there ({exc.strerror or type(exc).__name__}); nothing was "
              "stored. Fix: give a path in an existing directory, to a new or regular file (not a symlink).", 1)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(key + "\n")
    except OSError as exc:
        _fail(f"{out}: --out: the new key could not be written ({exc.strerror or type(exc).__name__}); nothing was "
              "stored. Fix: free space or choose another file.", 1)
    click.echo(f"{name}: key written to {out} (0600); it is not stored anywhere else.", err=True)


def _store_and_hand_out(spec, table, key: str, name: str, out: Path | None) -> None:
    """Hand the key out first, then store its hash: a key stored but never seen would be a live credential
    nobody holds. Handing out fails: nothing is stored. Storing fails: the key handed out never works, and
    the error says so (a --out file is removed)."""
    from gatekit import clientkeys as ck

    _hand_out(key, name, out)
    try:
        ck.save_keys(spec.keys_path, table)
    except BaseException as exc:
        if out is not None:
            out.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            where = "printed above" if out is None else f"written to {out} (removed)"
            _fail(f"{spec.keys_path}: the new key for {name} could not be stored ({exc.strerror or type(exc).__name__}): "
                  f"the key {where} does not work. Fix: discard it, make {spec.keys_path.parent} writable and run "
                  "the command again.", 1)
        raise


def _limit(value, lo, hi, flag):
    if value is not None and not lo <= value <= hi:
        _refuse(f"{flag}: {value} is out of range. Fix: use {lo} to {hi}.")
    return value


@keys.command("add")
@click.argument("name")
@_spec_opt
@click.option("--models", required=True, help="Comma-separated model names (or aliases) from the spec.")
@click.option("--rpm", type=int, help="Requests per minute, across all gateways.")
@click.option("--tpm", type=int, help="Tokens per minute, across all gateways.")
@click.option("--budget", type=float, help="Monthly budget in USD (UTC months), across all gateways.")
@click.option("--expires", type=click.DateTime(formats=["%Y-%m-%d"]), help="Last day (UTC) the key works: YYYY-MM-DD.")
@click.option("--out", type=_path, help="Write the key to this file (0600) instead of stdout.")
def keys_add(name, spec_path, models, rpm, tpm, budget, expires, out):
    """Make a key for NAME: shown once, stored as a hash with its limits. Takes effect on the next deploy."""
    import datetime as dt
    import math

    from gatekit import clientkeys as ck

    bad = ck.name_problem(name)
    if bad:
        _refuse(bad)
    spec, table = _spec_and_keys(spec_path)
    if name in table and table[name].active:
        _refuse(f"key {name!r} already exists in {spec.keys_path}. "
                               f"Fix: `gatekit keys rotate {name}` for a new key, or choose another name.")
    _limit(rpm, 1, ck.MAX_RPM, "--rpm")
    _limit(tpm, 1, ck.MAX_TPM, "--tpm")
    if budget is not None and (not math.isfinite(budget) or not 0 < budget <= ck.MAX_BUDGET_USD):
        _refuse(f"--budget: {budget} is not a budget. Fix: a positive number of USD up to {ck.MAX_BUDGET_USD:.0f}.")
    today = dt.datetime.now(dt.timezone.utc).date()
    if expires is not None and expires.date() < today:
        _refuse(f"--expires: {expires.date()} is in the past. Fix: give today or a later date.")
    key = ck.new_key()
    table[name] = ck.ClientKey(name=name, sha256=ck.key_hash(key), models=_models_option(models, spec), rpm=rpm,
                               tpm=tpm, budget_usd=budget, expires=expires.date() if expires else None, created=today)
    _store_and_hand_out(spec, table, key, name, out)
    click.echo(f"{name}: added to {spec.keys_path}; deploy to make it work on the gateways.", err=True)


@keys.command("rotate")
@click.argument("name")
@_spec_opt
@click.option("--out", type=_path, help="Write the new key to this file (0600) instead of stdout.")
def keys_rotate(name, spec_path, out):
    """Give NAME a new key (same limits). The old key stops working on the next deploy."""
    import datetime as dt

    from gatekit import clientkeys as ck

    spec, table = _spec_and_keys(spec_path)
    if name not in table or not table[name].active:
        _refuse(f"no active key {name[:80]!r} in {spec.keys_path}. Fix: `gatekit keys add {name[:80]} ...`.")
    key = ck.new_key()
    table[name].sha256, table[name].created = ck.key_hash(key), dt.datetime.now(dt.timezone.utc).date()
    _store_and_hand_out(spec, table, key, name, out)
    click.echo(f"{name}: new key in {spec.keys_path}; the old one works until the next deploy.", err=True)


@keys.command("revoke")
@click.argument("name")
@_spec_opt
def keys_revoke(name, spec_path):
    """Revoke NAME's key (kept in the file as revoked). It stops working on the next deploy, no restart."""
    import datetime as dt

    from gatekit import clientkeys as ck

    spec, table = _spec_and_keys(spec_path)
    if name not in table:
        _refuse(f"no key {name[:80]!r} in {spec.keys_path}. Fix: see `gatekit keys list --spec {spec_path}`.")
    if table[name].active:
        table[name].revoked = dt.datetime.now(dt.timezone.utc).date()
        ck.save_keys(spec.keys_path, table)
    click.echo(f"{name}: revoked in {spec.keys_path}; deploy to make it stop working.", err=True)


@keys.command("list")
@_spec_opt
@click.option("--json", "as_json", is_flag=True, help="One JSON document, for machines.")
@click.option("--usage", "inventory_file", type=_path,
              help="Also show today's and this month's requests, tokens and cost, read from the inventory's PostgreSQL.")
def keys_list(spec_path, as_json, inventory_file):
    """List keys: name, models, limits, state, and with --usage INVENTORY what each has used."""
    import datetime as dt
    import json

    spec, table = _spec_and_keys(spec_path)
    usage = {}
    if inventory_file is not None:
        from gatekit.usage import fetch_usage

        usage = fetch_usage(inventory_file)
    today = dt.datetime.now(dt.timezone.utc).date()
    rows = []
    for name in sorted(set(table) | set(usage)):
        k = table.get(name)
        state = "unknown" if k is None else "revoked" if not k.active else "expired" if k.expired(today) else "active"
        row = {"name": name, "state": state, "models": k.models if k else [], "rpm": k and k.rpm, "tpm": k and k.tpm,
               "budget_usd": k and k.budget_usd, "expires": k.expires.isoformat() if k and k.expires else None}
        if inventory_file is not None:
            zero = {"requests": 0, "tokens": 0, "cost_usd": 0.0}
            u = usage.get(name, {})
            row["today"] = {f: (u.get("today") or {}).get(f) or zero[f] for f in zero}
            row["month"] = {f: (u.get("month") or {}).get(f) or zero[f] for f in zero}
        rows.append(row)
    if as_json:
        click.echo(json.dumps({"keys": rows}, indent=1))
        return
    head = f"{'NAME':<20} {'STATE':<8} {'RPM':>7} {'TPM':>9} {'BUDGET':>9} {'EXPIRES':<10}"
    if inventory_file is not None:
        head += f" {'REQ TODAY':>9} {'TOK TODAY':>10} {'$ TODAY':>9} {'REQ MONTH':>9} {'TOK MONTH':>10} {'$ MONTH':>9}"
    click.echo(head + "  MODELS")
    for r in rows:
        line = (f"{r['name']:<20} {r['state']:<8} {r['rpm'] or '-':>7} {r['tpm'] or '-':>9} "
                f"{('%.2f' % r['budget_usd']) if r['budget_usd'] else '-':>9} {r['expires'] or '-':<10}")
        if inventory_file is not None:
            t, m = r["today"], r["month"]
            line += (f" {t['requests']:>9} {t['tokens']:>10} {t['cost_usd']:>9.6f}"
                     f" {m['requests']:>9} {m['tokens']:>10} {m['cost_usd']:>9.6f}")
        click.echo(line + "  " + ",".join(r["models"]))


@main.command()
@click.argument("inventory", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--calls", is_flag=True, help="Also send model calls through nginx: a stream, and 1 token per public model name.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document, for machines.")
@click.option("--host", "only", help="Check this inventory host only.")
def doctor(inventory: Path, calls: bool, as_json: bool, only: str | None):
    """Read-only live check of a deployed fleet: one check per production pitfall, with evidence and a fix.
    Exit 0 only when no check failed (skipped checks do not fail)."""
    from gatekit.doctor import FAIL, results_json
    from gatekit.doctor_run import render_text, run_doctor

    results = run_doctor(inventory, calls=calls, only=only)
    click.echo(results_json(results) if as_json else render_text(results))
    if any(r.status == FAIL for r in results):
        raise click.exceptions.Exit(1)


@main.command()
@click.argument("inventory", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="One JSON document, for machines.")
def status(inventory: Path, as_json: bool):
    """What each gateway serves now (LiteLLM version, config, key fingerprints, its last change), whether a change
    is pending or a switch was interrupted, and whether the fleet is mixed. Exit 0 when every gateway is current
    and the fleet is not mixed, 1 otherwise."""
    import json as _json

    from gatekit.status import render_text, run_status

    result = run_status(inventory)
    click.echo(_json.dumps(result, indent=1, sort_keys=True) if as_json else render_text(result))
    if result["mixed"] or any(g["state"] != "current" for g in result["gateways"]):
        raise click.exceptions.Exit(1)


if __name__ == "__main__":
    main(prog_name="gatekit")
