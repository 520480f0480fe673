"""`tenant-mcp`: manage tenants and keys, read the audit trail, serve an app.

Every command takes `--db URL` (or `TENANT_MCP_DATABASE_URL`) and `--json`. User mistakes print
one line to stderr and exit non-zero; no traceback. The commands that manage tenants only parse
arguments and print: the work is the admin API's (`tenant_mcp.admin`), which programs use alike.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import anyio

from tenant_mcp.admin import Admin, TenantLimits, item_key
from tenant_mcp.app import TenantMCP
from tenant_mcp.auth.jwt import JWTSettings
from tenant_mcp.controlplane import DEFAULT_DATABASE_URL
from tenant_mcp.errors import ConfigurationError, TenantMCPError
from tenant_mcp.limits import FIELDS, parse_rate
from tenant_mcp.replication.redis import DEFAULT_PREFIX, BrokerError
from tenant_mcp.secrets import KeyRing
from tenant_mcp.storage import is_postgres
from tenant_mcp.telemetry import TelemetrySettings, configure_tracing
from tenant_mcp.transports.http import HTTPOptions


class _UsageError(Exception):
    pass


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"TENANT_MCP_{name}", default)


def _flag(name: str) -> bool:
    return (_env(name) or "").lower() in ("1", "true", "yes", "on")


def _csv(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


def _print(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2, default=str) if args.json else text)


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    cells = [list(map(str, header)), *[["" if c is None else str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )


def _unannounced(exc: BrokerError) -> None:
    # The change is stored; replicas still pick it up within credential_cache_seconds.
    print(f"tenant-mcp: warning: {exc}; servers notice within their cache window", file=sys.stderr)


def _admin(args: argparse.Namespace) -> Admin:
    """The admin API on --db; with --app, it also knows the app's plans and catalogue."""
    target: str | TenantMCP = args.db
    if getattr(args, "app", None):
        target = load_app(args.app)
        target.database_url = args.db
    return Admin(target, redis_url=getattr(args, "redis_url", None),
                 redis_prefix=getattr(args, "redis_prefix", None), on_announce_error=_unannounced)  # fmt: skip


# -- tenants -------------------------------------------------------------------------------------


async def _tenant_create(args: argparse.Namespace, admin: Admin) -> None:
    tenant = await admin.create_tenant(args.slug, name=args.name, plan=args.plan)
    _print(args, tenant.public(), f"created tenant {tenant.slug} (plan {tenant.plan})")


async def _tenant_list(args: argparse.Namespace, admin: Admin) -> None:
    tenants = await admin.list_tenants()
    rows = [(t.slug, t.name, t.plan, t.status, t.created_at) for t in tenants]
    _print(args, [t.public() for t in tenants], _table(rows, ("SLUG", "NAME", "PLAN", "STATUS", "CREATED")))


async def _tenant_status(args: argparse.Namespace, admin: Admin) -> None:
    tenant = await (admin.suspend if args.command == "suspend" else admin.activate)(args.slug)
    _print(args, tenant.public(), f"tenant {tenant.slug} is {tenant.status}")


async def _tenant_delete(args: argparse.Namespace, admin: Admin) -> None:
    if not args.yes:
        raise _UsageError(f"deleting {args.slug!r} removes all of its data; repeat with --yes to confirm")
    if args.drain_seconds < 0:
        raise _UsageError("--drain-seconds must not be negative")
    tenant = await admin.delete_tenant(args.slug, drain_seconds=args.drain_seconds)
    _print(args, {"deleted": tenant.slug}, f"deleted tenant {tenant.slug} and all of its data")


async def _tenant_export(args: argparse.Namespace, admin: Admin) -> None:
    export = await admin.export_tenant(args.slug)
    slug = export.tenant.slug
    output = Path(args.output or f"{slug}-export.json")
    await anyio.Path(output).write_text(json.dumps(export.as_dict(), indent=2, default=str))
    counts = {table: len(rows) for table, rows in export.tables.items()}
    _print(args, {"tenant": slug, "file": str(output), "rows": counts}, f"wrote {output} ({counts})")


# -- keys ----------------------------------------------------------------------------------------


async def _key_create(args: argparse.Namespace, admin: Admin) -> None:
    items = None if args.tools is None else _csv(args.tools)
    record, key = await admin.create_key(args.tenant, scopes=_csv(args.scopes), label=args.label, items=items)
    data = {"tenant": args.tenant, "key_id": record.key_id, "key": key, "scopes": list(record.scopes),
            "items": None if record.items is None else list(record.items)}  # fmt: skip
    _print(args, data, f"{key}\n(key id {record.key_id}; this is the only time the key is shown)")


async def _key_list(args: argparse.Namespace, admin: Admin) -> None:
    keys = await admin.list_keys(args.tenant)
    rows = [
        (
            k.key_id,
            ",".join(k.scopes),
            k.label,
            k.created_at,
            k.last_used_at,
            "revoked" if k.revoked_at else "active",
        )
        for k in keys
    ]
    header = ("KEY ID", "SCOPES", "LABEL", "CREATED", "LAST USED", "STATUS")
    _print(args, [k.public(args.tenant) for k in keys], _table(rows, header))


async def _key_revoke(args: argparse.Namespace, admin: Admin) -> None:
    record = await admin.revoke_key(args.key_id)
    _print(args, {"key_id": record.key_id, "revoked_at": record.revoked_at}, f"revoked key {record.key_id}")


# -- the per-tenant catalogue ----------------------------------------------------------------------


async def _item_policy(args: argparse.Namespace, admin: Admin) -> None:
    """`tool enable|disable|reset TENANT ITEM` and `plan set-default PLAN ITEM STATE`."""
    item = item_key(args.item)
    if "plan" in args:
        await admin.set_plan_policy(args.plan, item, args.state)
        scope, whom = {"plan": args.plan}, f"plan {args.plan}"
    else:
        tenant = await admin.set_item_policy(args.tenant, item, args.state)
        scope, whom = {"tenant": tenant.slug}, tenant.slug
    _print(args, {**scope, "item": item, "state": args.state}, f"{item} is {args.state} for {whom}")


async def _tool_list(args: argparse.Namespace, admin: Admin) -> None:
    rows = await admin.catalogue(args.tenant)
    _print(args, rows, _table([(r["item"], "yes" if r["visible"] else "no", r["why"]) for r in rows],
                              ("ITEM", "VISIBLE", "WHY")))  # fmt: skip


# -- secrets -------------------------------------------------------------------------------------


async def _secret_set(args: argparse.Namespace, admin: Admin) -> None:
    tenant = await admin.tenant(args.tenant)
    if args.from_env:
        value = os.environ.get(args.from_env)
        if value is None:
            raise _UsageError(f"--from-env {args.from_env}: that environment variable is not set")
    elif sys.stdin.isatty():
        import getpass

        value = getpass.getpass(f"value of {args.name} for {tenant.slug}: ")
    else:
        value = sys.stdin.read().removesuffix("\n")  # `echo value |` adds one
    await admin.set_secret(tenant.slug, args.name, value)
    _print(
        args,
        {"tenant": tenant.slug, "name": args.name, "set": True},
        f"secret {args.name} set for {tenant.slug}",
    )


async def _secret_list(args: argparse.Namespace, admin: Admin) -> None:
    items = await admin.list_secrets(args.tenant)
    _print(
        args,
        [{"name": i.name, "created_at": i.created_at, "updated_at": i.updated_at} for i in items],
        _table([(i.name, i.created_at, i.updated_at) for i in items], ("NAME", "CREATED", "UPDATED")),
    )


async def _secret_delete(args: argparse.Namespace, admin: Admin) -> None:
    await admin.delete_secret(args.tenant, args.name)
    _print(args, {"tenant": args.tenant, "name": args.name, "deleted": True}, f"secret {args.name} deleted")


async def _secret_rotate(args: argparse.Namespace, admin: Admin) -> None:
    count = await admin.rotate_secret_key()
    _print(args, {"rewrapped": count}, f"re-wrapped {count} tenant data key(s) with the first key")


def _secret_new_key(args: argparse.Namespace) -> None:
    print(KeyRing.new_key())


# -- upstream connections -------------------------------------------------------------------------


async def _connection_list(args: argparse.Namespace, admin: Admin) -> None:
    tenant = await admin.tenant(args.tenant)
    items = [c.public(tenant.slug) for c in await admin.list_connections(args.tenant, args.provider)]
    rows = [
        (c["provider"], c["owner"], c["status"], c["reason"], c["connected_by"], c["updated_at"])
        for c in items
    ]
    _print(args, items, _table(rows, ("PROVIDER", "OWNER", "STATUS", "REASON", "CONNECTED BY", "UPDATED")))


async def _connection_revoke(args: argparse.Namespace, admin: Admin) -> None:
    tenant = await admin.tenant(args.tenant)
    count = await admin.revoke_connections(args.tenant, args.provider)
    what = f"{args.provider} connection(s)" if args.provider else "connection(s)"
    _print(args, {"tenant": tenant.slug, "provider": args.provider, "revoked": count},
           f"forgot {count} {what} of {tenant.slug} (revoke the grant at the provider too)")  # fmt: skip


# -- canaries ------------------------------------------------------------------------------------


async def _canary_plant(args: argparse.Namespace, admin: Admin) -> None:
    value = await admin.plant_canary(args.tenant)
    _print(args, {"tenant": args.tenant, "canary": value}, f"planted canary {value} in {args.tenant}")


# -- limits and usage ----------------------------------------------------------------------------


def _limit_value(name: str, raw: str) -> Any:
    """A limit from the command line: a value, `none` (unlimited) or `default` (the plan's)."""
    if raw in ("default", "none"):
        return None if raw == "none" else raw
    if name.endswith("rate"):
        parse_rate(raw)
        return raw
    try:
        value = int(raw)
    except ValueError:
        raise _UsageError(
            f"--{name.replace('_', '-')} takes a whole number, none or default (got {raw!r})"
        ) from None
    if value < 1:
        raise _UsageError(f"--{name.replace('_', '-')} must be at least 1 (or none for unlimited)")
    return value


def _limits_text(limits: TenantLimits) -> str:
    tenant, override, effective = limits.tenant, limits.override, limits.effective
    rows: list[tuple[Any, ...]] = []
    for name in FIELDS:
        stored = ("unlimited" if override[name] is None else override[name]) if name in override else "(plan)"
        if effective is None:
            rows.append((name, stored))
        else:
            value = getattr(effective, name)
            rows.append((name, stored, "unlimited" if value is None else value))
    header = ("LIMIT", "OVERRIDE") if effective is None else ("LIMIT", "OVERRIDE", "EFFECTIVE")
    note = (
        "" if effective is not None else "\n(plan defaults are in the app: add --app MODULE:ATTR to see them)"
    )
    return f"tenant {tenant.slug} (plan {tenant.plan})\n" + _table(rows, header) + note


async def _limits_set(args: argparse.Namespace, admin: Admin) -> None:
    values = {name: _limit_value(name, raw) for name in FIELDS if (raw := getattr(args, name)) is not None}
    if not values:
        raise _UsageError("give at least one limit, e.g. --rate 100/minute or --concurrency 8")
    limits = await admin.set_limits(args.tenant, values)
    tenant = limits.tenant
    data = {"tenant": tenant.slug, "plan": tenant.plan, "override": limits.override}
    _print(
        args, data, f"limits of {tenant.slug} set; servers apply them within their credential cache window"
    )


async def _limits_show(args: argparse.Namespace, admin: Admin) -> None:
    limits = await admin.limits(args.tenant)
    data: dict[str, Any] = {
        "tenant": limits.tenant.slug,
        "plan": limits.tenant.plan,
        "override": limits.override,
    }
    if limits.effective is not None:
        data["effective"] = limits.effective.as_dict()
    _print(args, data, _limits_text(limits))


async def _usage(args: argparse.Namespace, admin: Admin) -> None:
    if args.since is not None and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", args.since):
        raise _UsageError(f"--since takes a UTC date YYYY-MM-DD (got {args.since!r})")
    used = await admin.usage(args.tenant, args.since)
    data = {
        "tenant": used.limits.tenant.slug, "since": used.since, "days": used.days,
        "calls": used.calls, "refused": used.refused,
        "today": used.today, "this_month": used.this_month, "quota_left": used.quota_left,
    }  # fmt: skip
    lines = [
        _table([(d["day"], d["calls"], d["refused"]) for d in used.days], ("DAY (UTC)", "CALLS", "REFUSED"))
    ]
    lines.append(f"total since {used.since}: {used.calls} calls, {used.refused} refused")
    quotas, left, effective = used.limits.quotas, used.quota_left, used.limits.effective
    for period in ("daily", "monthly"):
        if left[period] is not None:
            lines.append(f"{period} quota: {quotas[period]}, {left[period]} left")
        elif period in quotas or effective is not None:
            lines.append(f"{period} quota: unlimited")
    if effective is None and not any(p in used.limits.override for p in ("daily", "monthly")):
        lines.append("(plan quotas are in the app: add --app MODULE:ATTR to see what is left)")
    _print(args, data, "\n".join(lines))


# -- audit ---------------------------------------------------------------------------------------


async def _audit(args: argparse.Namespace, admin: Admin) -> None:
    if args.limit < 1:
        raise _UsageError("--limit must be at least 1")
    events = await admin.audit_events(args.tenant, args.limit)
    rows = [(e["at"], e["principal"], e["method"], e["target"], e["outcome"], e["reason"]) for e in events]
    _print(args, events, _table(rows, ("AT", "PRINCIPAL", "METHOD", "TARGET", "OUTCOME", "REASON")))


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(text: str) -> float:
    """Seconds in ``90d``, ``12h``, ``30m`` or ``45s``."""
    value, unit = text[:-1], text[-1:].lower()
    if unit not in _UNITS or not value.replace(".", "", 1).isdigit():
        raise _UsageError(f"expected a duration such as 90d, 12h or 30m (got {text!r})")
    return float(value) * _UNITS[unit]


def _since(text: str | None) -> str | None:
    """An ISO time as given, or a duration back from now (``7d``)."""
    if text is None or (text[:4].isdigit() and "-" in text):
        return text
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - _duration(text))) + ".000Z"


async def _audit_export(args: argparse.Namespace, admin: Admin) -> None:
    since, cursor, written = _since(args.since), args.after, 0
    pages = admin.audit_pages(args.tenant, after=cursor, since=since)
    first = await anext(pages, None)  # an unknown tenant fails here, before the file is opened
    # A CLI command, not a server: blocking writes are what a pipe to the next tool wants.
    out = open(args.output, "a", encoding="utf-8") if args.output else sys.stdout  # noqa: SIM115, ASYNC230
    try:
        page = first
        while page is not None:
            for event in page:
                out.write(json.dumps(event, separators=(",", ":"), default=str) + "\n")
            out.flush()
            cursor, written = int(page[-1]["id"]), written + len(page)
            page = await anext(pages, None)
    finally:
        if out is not sys.stdout:
            out.close()
    # The cursor resumes an interrupted or periodic export: --after CURSOR.
    print(f"exported {written} event(s); cursor {cursor}", file=sys.stderr)


async def _audit_prune(args: argparse.Namespace, admin: Admin) -> None:
    before = _since(args.older_than)
    assert before is not None
    deleted = await admin.prune_audit(before)
    _print(
        args, {"deleted": deleted, "before": before}, f"deleted {deleted} audit event(s) from before {before}"
    )


# -- serving -------------------------------------------------------------------------------------


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tenant-mcp")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _module_from_file(path: Path) -> Any:
    """A module from a file path, absolute or relative to the working directory."""
    import importlib.util

    if not path.is_file():
        raise _UsageError(f"no such file: {str(path)!r}")
    sys.path.insert(0, str(path.resolve().parent))  # so the file can import its neighbours
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


def load_app(target: str) -> TenantMCP:
    """Import ``package.module:attr`` or ``path/to/file.py:attr``."""
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise _UsageError(f"expected MODULE:ATTR, e.g. example_servers.notes:app (got {target!r})")
    sys.path.insert(0, os.getcwd())
    try:
        if module_name.endswith(".py"):
            module = _module_from_file(Path(module_name))
        else:
            module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise _UsageError(f"cannot import {module_name!r}: {exc}") from None
    except TenantMCPError as exc:  # the app's own declaration is wrong: a usage error, like the others
        raise _UsageError(f"{target}: {exc}") from None
    if not hasattr(module, attr):
        raise _UsageError(f"module {module_name!r} has no attribute {attr!r}")
    app = getattr(module, attr)
    if not isinstance(app, TenantMCP):
        raise _UsageError(f"{target!r} is a {type(app).__name__}, not a TenantMCP instance")
    return app


def _jwt_settings(args: argparse.Namespace, audience_default: str) -> JWTSettings | None:
    if not (args.jwt_jwks_url or args.jwt_public_key):
        if args.jwt_issuer:
            raise _UsageError("--jwt-issuer needs --jwt-jwks-url or --jwt-public-key")
        return None
    common: dict[str, Any] = {
        "issuers": tuple(_csv(args.jwt_issuer)),
        "audience": args.jwt_audience or audience_default,
        "tenant_claim": args.jwt_tenant_claim,
    }
    if args.jwt_jwks_url and args.jwt_public_key:
        raise _UsageError("give either --jwt-jwks-url or --jwt-public-key, not both")
    if args.jwt_public_key:
        return JWTSettings.from_public_key_file(args.jwt_public_key, **common)
    return JWTSettings(jwks_url=args.jwt_jwks_url, **common)


def _http_options(args: argparse.Namespace) -> HTTPOptions:
    options = HTTPOptions(
        host=args.host,
        port=args.port,
        stateless=args.stateless,
        json_response=args.json_response,
        allowed_hosts=_csv(args.allowed_hosts),
        allowed_origins=_csv(args.allowed_origins),
        required_scopes=_csv(args.required_scopes),
        oauth_issuer=args.oauth_issuer,
        public_url=args.public_url,
    )
    options.jwt = _jwt_settings(args, options.resource_url)
    return options


def _configured(args: argparse.Namespace) -> tuple[TenantMCP, HTTPOptions]:
    """The app and HTTP options of a `serve` command line."""
    app = load_app(args.app)
    if args.db_given:
        app.database_url = args.db
    if args.migration_url:
        app.migration_url = args.migration_url
    app.data_url = args.data_db or app.data_url
    app.telemetry = TelemetrySettings(
        metrics_address=args.metrics_address or app.telemetry.metrics_address,
        metrics_tenants=frozenset(_csv(args.metrics_tenants)) or app.telemetry.metrics_tenants,
        log_format="json" if args.log_format == "json" else app.telemetry.log_format,
        enduser_id=app.telemetry.enduser_id,
    )
    configure_tracing()
    if args.audit_retain:
        app.audit_retain_days = _duration(args.audit_retain) / 86400
    app.redis_url = args.redis_url or app.redis_url
    app.redis_prefix = args.redis_prefix or app.redis_prefix
    return app, _http_options(args)


def _serve(args: argparse.Namespace) -> None:
    app, options = _configured(args)
    if args.workers < 1 or (args.workers > 1 and args.transport != "streamable-http"):
        raise _UsageError("--workers is a number of processes, 1 or more, for streamable-http")
    if args.transport == "stdio":
        asyncio.run(app.serve_stdio(jwt=options.jwt))
    elif args.workers > 1:
        _serve_workers(args, app, options)
    elif args.transport == "streamable-http":
        asyncio.run(app.serve_http(options, log_level=args.log_level, access_log=args.access_log))
    else:
        raise _UsageError(f"unknown transport {args.transport!r}: use streamable-http or stdio")


_WORKER_ARGV = "TENANT_MCP_WORKER_ARGV"


def _serve_workers(args: argparse.Namespace, app: TenantMCP, options: HTTPOptions) -> None:
    """`serve --workers N`: N processes on one socket; each rebuilds the app from this command line."""
    if not options.stateless:
        raise _UsageError(
            f"--workers {args.workers} needs --stateless: a 2025-era session lives in the memory of the "
            "worker that opened it, and connections, not sessions, are spread over the workers "
            "(2026-07-28 clients never open sessions; --stateless serves them as well)"
        )
    if app.redis_url is None:
        raise _UsageError(
            f"--workers {args.workers} needs Redis (--redis-url or TENANT_MCP_REDIS_URL): the workers share "
            "rate limits, credential revocations and tenant events through it"
        )
    from tenant_mcp.transports.http import serve_workers

    asyncio.run(app.check())
    os.environ[_WORKER_ARGV] = json.dumps(args.argv)
    access_log = args.access_log and app.telemetry.log_format != "json"
    serve_workers(
        "tenant_mcp.cli:worker_app", options, args.workers, log_level=args.log_level, access_log=access_log
    )


def worker_app() -> Any:
    """The ASGI app of one `serve --workers N` process (uvicorn calls this in each worker)."""
    from tenant_mcp.transports.http import prepare_process

    args = _parse(json.loads(os.environ[_WORKER_ARGV]))
    app, options = _configured(args)
    asgi = app.http_app(options)
    prepare_process(args.log_level)
    return asgi


def _migrate(args: argparse.Namespace) -> None:
    app = load_app(args.app)
    if args.db_given:
        app.database_url = args.db
    owner = args.migration_url or app.database_url
    if not is_postgres(owner):
        raise _UsageError(
            "migrate is for PostgreSQL (give --migration-url postgresql://OWNER@HOST/DB); "
            "SQLite databases migrate themselves when opened"
        )
    app.data_url = args.data_db or app.data_url
    applied = asyncio.run(app.migrate(owner, app_role=args.app_role, data_role=args.data_role))
    text = ", ".join(f"{n} {component} step(s)" for component, n in applied.items())
    _print(args, {"applied": applied}, f"applied {text}" if any(applied.values()) else "already up to date")


def _check_port(host: str, port: int) -> None:
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise _UsageError(
                f"cannot serve on {host}:{port}: {exc.strerror}; try --port {port + 1}"
            ) from None


def _demo(args: argparse.Namespace) -> None:
    from example_servers.notes import app

    app.database_url = args.db
    # The built-in authorization server is on, so clients that only speak OAuth can connect too.
    options = HTTPOptions(host=args.host, port=args.port, oauth_issuer=f"http://{args.host}:{args.port}")
    _check_port(args.host, args.port)  # before printing keys and configurations that would not work

    async def prepare() -> dict[str, str]:
        keys = {}
        async with Admin(args.db) as admin:
            existing = {t.slug for t in await admin.list_tenants()}
            for slug, name, plan, scopes in (
                ("acme", "Acme Corp", "pro", ["notes:export"]),
                ("globex", "Globex", "free", []),
            ):
                if slug not in existing:
                    await admin.create_tenant(slug, name=name, plan=plan)
                for old in await admin.list_keys(slug):  # one valid demo key per tenant, the newest
                    if old.label == "demo" and old.revoked_at is None:
                        await admin.revoke_key(old.key_id)
                _, keys[slug] = await admin.create_key(slug, scopes=scopes, label="demo")
        return keys

    keys = asyncio.run(prepare())
    url = f"http://{args.host}:{args.port}{options.path}"
    # The script beside this interpreter: after the Quickstart the venv is not activated, so PATH
    # has no tenant-mcp (or another install's).
    beside = Path(sys.executable).parent / "tenant-mcp"
    executable = str(beside) if beside.exists() else shutil.which("tenant-mcp") or "tenant-mcp"
    # Claude Desktop starts the server in another directory: give it an absolute SQLite path.
    db_url = (
        args.db if is_postgres(args.db) else "sqlite:///" + str(Path(args.db[len("sqlite:///") :]).resolve())
    )
    desktop = {
        "mcpServers": {
            f"notes-{slug}": {
                "command": executable,
                "args": ["serve", "example_servers.notes:app", "--transport", "stdio", "--db", db_url],
                "env": {"TENANT_MCP_API_KEY": key},
            }
            for slug, key in keys.items()
        }
    }
    print(f"tenant_mcp demo: the notes server at {url}\n")
    for slug, key in keys.items():
        print(f"  {slug:7} key: {key}")
    print("\nClaude Desktop (claude_desktop_config.json), over stdio:")
    print(json.dumps(desktop, indent=2))
    print("\nMCP Inspector (CLI mode; Node.js 22.19+), over HTTP:")
    print(
        f"  npx @modelcontextprotocol/inspector --cli {url} --transport http "
        f'--header "Authorization: Bearer {keys["acme"]}" --method tools/list'
    )
    print("\nPython (mcp SDK), as a script:")
    print(
        "  import asyncio\n  import httpx2\n  from mcp import Client\n"
        "  from mcp.client.streamable_http import streamable_http_client\n\n"
        "  async def main() -> None:\n"
        f'      hc = httpx2.AsyncClient(headers={{"Authorization": "Bearer {keys["acme"]}"}})\n'
        f'      async with Client(streamable_http_client("{url}", http_client=hc)) as client:\n'
        '          print(await client.call_tool("whoami", {}))\n\n'
        "  asyncio.run(main())"
    )
    print(f"\nOAuth-only clients: add {url} as a remote server and sign in with a key above.")
    print("\nServing until Ctrl-C.", flush=True)
    asyncio.run(app.serve_http(options, log_level="warning"))


# -- parser --------------------------------------------------------------------------------------

Handler = Callable[[argparse.Namespace, Admin], Coroutine[Any, Any, None]]


def build_parser() -> argparse.ArgumentParser:
    database = argparse.ArgumentParser(add_help=False)
    database.add_argument(
        "--db",
        default=_env("DATABASE_URL", DEFAULT_DATABASE_URL),
        help="control-plane database URL (env TENANT_MCP_DATABASE_URL; default %(default)s)",
    )
    # Commands that print a result; `serve` and `demo` print none to parse.
    common = argparse.ArgumentParser(add_help=False, parents=[database])
    common.add_argument("--json", action="store_true", help="machine-readable output")
    # Where replicas meet: revocations and suspensions are announced there, `serve` listens.
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument("--redis-url", default=_env("REDIS_URL"),
                        help="Redis shared by the replicas (env TENANT_MCP_REDIS_URL)")  # fmt: skip
    shared.add_argument("--redis-prefix", default=_env("REDIS_PREFIX"),
                        help=f"channel and key prefix (env TENANT_MCP_REDIS_PREFIX; default {DEFAULT_PREFIX})")  # fmt: skip

    parser = argparse.ArgumentParser(
        prog="tenant-mcp", description="Multi-tenant MCP servers: tenants, keys, audit, serving."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="group", required=True, metavar="COMMAND")

    tenant = commands.add_parser("tenant", help="create, list, suspend, delete and export tenants")
    tenant_cmds = tenant.add_subparsers(dest="command", required=True, metavar="ACTION")
    p = tenant_cmds.add_parser("create", parents=[common], help="create a tenant")
    p.add_argument("slug", help="lowercase letters, digits and hyphens")
    p.add_argument("--name", help="display name (default: the slug)")
    p.add_argument("--plan", default="free", help="plan name used by plans=[...] rules (default: free)")
    p.set_defaults(handler=_tenant_create)
    p = tenant_cmds.add_parser("list", parents=[common], help="list tenants")
    p.set_defaults(handler=_tenant_list)
    for action, helptext in (
        ("suspend", "refuse every request of a tenant"),
        ("activate", "lift a suspension"),
    ):
        p = tenant_cmds.add_parser(action, parents=[common, shared], help=helptext)
        p.add_argument("slug")
        p.set_defaults(handler=_tenant_status)
    p = tenant_cmds.add_parser("delete", parents=[common, shared], help="delete a tenant and all of its data")
    p.add_argument("slug")
    p.add_argument("--yes", action="store_true", help="confirm the deletion")
    p.add_argument(
        "--drain-seconds",
        type=float,
        default=2.0,
        help="wait after suspending, for servers to stop the tenant's calls (default 2; at least the "
        "servers' credential cache window)",
    )
    p.set_defaults(handler=_tenant_delete)
    p = tenant_cmds.add_parser("export", parents=[common], help="write a tenant's data to a JSON file")
    p.add_argument("slug")
    p.add_argument("--output", "-o", help="file to write (default: SLUG-export.json)")
    p.set_defaults(handler=_tenant_export)

    key = commands.add_parser("key", help="create, list and revoke API keys")
    key_cmds = key.add_subparsers(dest="command", required=True, metavar="ACTION")
    p = key_cmds.add_parser("create", parents=[common], help="create a key (shown once)")
    p.add_argument("tenant", help="tenant slug")
    p.add_argument("--scopes", default="", help="comma-separated scopes, e.g. notes:export")
    p.add_argument("--label", default="", help="a note for people, e.g. 'claude desktop'")
    p.add_argument("--tools", metavar="ITEMS", help="allow-list: the key sees only these items "
                   "(comma-separated NAME or KIND:NAME; its OAuth grants inherit the list)")  # fmt: skip
    p.set_defaults(handler=_key_create)
    p = key_cmds.add_parser("list", parents=[common], help="list a tenant's keys")
    p.add_argument("tenant", help="tenant slug")
    p.set_defaults(handler=_key_list)
    p = key_cmds.add_parser(
        "revoke",
        parents=[common, shared],
        help="revoke a key (refused within the credential cache window, 1 s by default; at once with Redis)",
    )
    p.add_argument("key_id")
    p.set_defaults(handler=_key_revoke)

    secret = commands.add_parser(
        "secret", help="per-tenant secrets (encrypted; values never on the command line)",
        description="Secrets are encrypted with a per-tenant data key wrapped by TENANT_MCP_SECRET_KEY "
        "(base64 keys, comma-separated, the first one current). Tools read them with ctx.secrets.get(name).",
    )  # fmt: skip
    secret_cmds = secret.add_subparsers(dest="command", required=True, metavar="ACTION")
    p = secret_cmds.add_parser(
        "set", parents=[common], help="set a secret: the value from stdin or --from-env"
    )
    p.add_argument("tenant", help="tenant slug")
    p.add_argument("name", help="secret name, e.g. crm_api_key")
    p.add_argument("--from-env", metavar="VAR", help="read the value from this environment variable")
    p.set_defaults(handler=_secret_set)
    p = secret_cmds.add_parser("list", parents=[common], help="a tenant's secret names and dates (no values)")
    p.add_argument("tenant", help="tenant slug")
    p.set_defaults(handler=_secret_list)
    p = secret_cmds.add_parser("delete", parents=[common], help="delete a tenant's secret")
    p.add_argument("tenant", help="tenant slug")
    p.add_argument("name")
    p.set_defaults(handler=_secret_delete)
    p = secret_cmds.add_parser("rotate-key", parents=[common],
                               help="re-wrap every tenant data key with the first key of TENANT_MCP_SECRET_KEY")  # fmt: skip
    p.set_defaults(handler=_secret_rotate)
    p = secret_cmds.add_parser("new-key", help="print a new random key for TENANT_MCP_SECRET_KEY")
    p.set_defaults(handler=None, run=_secret_new_key)

    connection = commands.add_parser(
        "connection", help="upstream OAuth connections of a tenant (tokens are never shown)",
        description="Connections are made by people through connect links their tools hand them; "
        "these commands show and forget them.",
    )  # fmt: skip
    connection_cmds = connection.add_subparsers(dest="command", required=True, metavar="ACTION")
    for action, handler, text in (
        ("list", _connection_list, "a tenant's connections: provider, owner, status (no tokens)"),
        (
            "revoke",
            _connection_revoke,
            "forget a tenant's connections (of PROVIDER, or all): calls get a new link",
        ),
    ):
        p = connection_cmds.add_parser(action, parents=[common], help=text)
        p.add_argument("tenant", help="tenant slug")
        p.add_argument("provider", nargs="?", help="connection name, e.g. crm (default: all)")
        p.set_defaults(handler=handler)

    tool = commands.add_parser(
        "tool", help="the per-tenant catalogue: what a tenant sees (tools, prompts, resources, templates)",
        description="ITEM is a tool name, or KIND:NAME with KIND tool, prompt, resource or template. "
        "Policies narrow what code allows (scopes, plans) and turn on per_tenant=True items.",
    )  # fmt: skip
    tool_cmds = tool.add_subparsers(dest="command", required=True, metavar="ACTION")
    for action, state, text in (
        ("enable", "enabled", "give a tenant an item (a per_tenant=True one, or one disabled before)"),
        ("disable", "disabled", "hide an item from a tenant (it answers exactly like a missing one)"),
        ("reset", "default", "return an item to what code says for the tenant"),
    ):
        p = tool_cmds.add_parser(action, parents=[common, shared], help=text)
        p.add_argument("tenant", help="tenant slug")
        p.add_argument("item", help="NAME or KIND:NAME")
        p.set_defaults(handler=_item_policy, state=state)
    p = tool_cmds.add_parser("list", parents=[common], help="what a tenant sees, and why")
    p.add_argument("tenant", help="tenant slug")
    p.add_argument("--app", required=True, metavar="MODULE:ATTR", help="the TenantMCP whose items to list")
    p.set_defaults(handler=_tool_list)

    plan = commands.add_parser("plan", help="catalogue defaults per plan")
    plan_cmds = plan.add_subparsers(dest="command", required=True, metavar="ACTION")
    p = plan_cmds.add_parser(
        "set-default", parents=[common, shared], help="enable or disable an item for every tenant on a plan",
        description="A tenant's own `tool enable|disable` of the same item wins over its plan's default.",
    )  # fmt: skip
    p.add_argument("plan", help="plan name, e.g. free")
    p.add_argument("item", help="NAME or KIND:NAME")
    p.add_argument("state", choices=["enabled", "disabled", "default"])
    p.set_defaults(handler=_item_policy)

    canary = commands.add_parser("canary", help="plant canaries for the leak guard")
    canary_cmds = canary.add_subparsers(dest="command", required=True, metavar="ACTION")
    p = canary_cmds.add_parser("plant", parents=[common], help="plant a canary value in a tenant's data")
    p.add_argument("tenant", help="tenant slug")
    p.set_defaults(handler=_canary_plant)

    limits = commands.add_parser("limits", help="set and show a tenant's limits (over its plan's defaults)")
    limits_cmds = limits.add_subparsers(dest="command", required=True, metavar="ACTION")
    with_app = argparse.ArgumentParser(add_help=False)
    with_app.add_argument("--app", default=_env("APP"),
                          help="MODULE:ATTR of the TenantMCP, whose plan defaults to include (env TENANT_MCP_APP)")  # fmt: skip
    p = limits_cmds.add_parser(
        "set", parents=[common, shared], help="override limits of a tenant",
        description="Each value replaces the plan's default for this tenant; 'none' lifts the limit, "
        "'default' goes back to the plan's. Running servers apply it within their credential cache "
        "window (at once with Redis).",
    )  # fmt: skip
    p.add_argument("tenant", help="tenant slug")
    for name, helptext in (
        ("rate", "requests per moving window for the tenant, e.g. 100/minute"),
        ("principal_rate", "the same per API key or JWT subject, e.g. 30/minute"),
        ("concurrency", "calls running at once"),
        ("sessions", "open HTTP sessions"),
        ("daily", "tool calls per UTC day"),
        ("monthly", "tool calls per calendar month (UTC)"),
        ("subscriptions", "resource subscriptions and listen streams held at once"),
    ):
        p.add_argument(
            f"--{name.replace('_', '-')}", dest=name, metavar="VALUE", help=f"{helptext}; none; default"
        )
    p.set_defaults(handler=_limits_set)
    p = limits_cmds.add_parser(
        "show", parents=[common, with_app], help="a tenant's stored and effective limits"
    )
    p.add_argument("tenant", help="tenant slug")
    p.set_defaults(handler=_limits_show)

    p = commands.add_parser(
        "usage", parents=[common, with_app], help="a tenant's calls, refusals and quota left"
    )
    p.add_argument("tenant", help="tenant slug")
    p.add_argument("--since", help="first UTC day to show, YYYY-MM-DD (default: the first of this month)")
    p.set_defaults(handler=_usage)

    audit = commands.add_parser(
        "audit", help="the audit trail: show a tenant's events, export, prune",
        description="`audit TENANT` is short for `audit show TENANT`.",
    )  # fmt: skip
    audit_cmds = audit.add_subparsers(dest="command", required=True, metavar="ACTION")
    p = audit_cmds.add_parser("show", parents=[common], help="recent audit events of a tenant")
    p.add_argument("tenant", help="tenant slug")
    p.add_argument("--limit", type=int, default=50, help="how many events, newest first (default 50)")
    p.set_defaults(handler=_audit)
    p = audit_cmds.add_parser(
        "export", parents=[common], help="stream events as JSON lines, oldest first (resumable)",
        description="Write audit events as JSON lines (one per event, with its id) to stdout or -o FILE. "
        "The last line on stderr gives the cursor: pass it as --after to continue from there.",
    )  # fmt: skip
    p.add_argument("tenant", nargs="?", help="tenant slug (default: every tenant)")
    p.add_argument("--since", help="ISO time (2026-11-01T00:00:00Z) or a duration back from now (7d, 12h)")
    p.add_argument("--after", type=int, default=0, metavar="CURSOR", help="continue after this event id")
    p.add_argument("--format", choices=["jsonl"], default="jsonl", help="jsonl (the only format)")
    p.add_argument("-o", "--output", help="append to this file instead of stdout")
    p.set_defaults(handler=_audit_export)
    p = audit_cmds.add_parser("prune", parents=[common], help="delete events older than a retention")
    p.add_argument("--older-than", required=True, metavar="DURATION", help="e.g. 90d")
    p.set_defaults(handler=_audit_prune)

    serve = commands.add_parser(
        "serve",
        parents=[database, shared],
        help="serve a TenantMCP app",
        epilog="Every option is also read from the environment, TENANT_MCP_<NAME> with NAME the option "
        "in capitals, - as _ (TENANT_MCP_PORT=9000, TENANT_MCP_METRICS_ADDRESS, TENANT_MCP_STATELESS=1), except "
        "--db (TENANT_MCP_DATABASE_URL) and --data-db (TENANT_MCP_DATA_URL); a flag given on the command "
        "line wins. Over stdio the credential is TENANT_MCP_API_KEY.",
    )
    serve.add_argument("app", help="MODULE:ATTR of a TenantMCP, e.g. example_servers.notes:app")
    serve.add_argument("--transport", default=_env("TRANSPORT", "streamable-http"),
                       choices=["streamable-http", "stdio"], help="default: streamable-http")  # fmt: skip
    serve.add_argument("--host", default=_env("HOST", "127.0.0.1"), help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=int(_env("PORT", "8000") or 8000), help="default 8000")
    serve.add_argument("--stateless", action="store_true", default=_flag("STATELESS"),
                       help="no sessions: every request stands alone")  # fmt: skip
    serve.add_argument("--json-response", action="store_true", default=_flag("JSON_RESPONSE"),
                       help="answer POSTs with JSON instead of SSE")  # fmt: skip
    serve.add_argument("--allowed-hosts", default=_env("ALLOWED_HOSTS"),
                       help="comma-separated extra Host values, e.g. mcp.example.com")  # fmt: skip
    serve.add_argument("--allowed-origins", default=_env("ALLOWED_ORIGINS"),
                       help="comma-separated extra Origin values, e.g. https://app.example.com")  # fmt: skip
    serve.add_argument("--required-scopes", default=_env("REQUIRED_SCOPES"),
                       help="comma-separated scopes every credential must have (403 otherwise)")  # fmt: skip
    serve.add_argument(
        "--jwt-jwks-url", default=_env("JWT_JWKS_URL"), help="accept JWTs signed by these keys"
    )
    serve.add_argument(
        "--jwt-public-key", default=_env("JWT_PUBLIC_KEY"), help="PEM file of the JWT signing key"
    )
    serve.add_argument("--jwt-issuer", default=_env("JWT_ISSUER"), help="required iss (comma-separated list)")
    serve.add_argument("--jwt-audience", default=_env("JWT_AUDIENCE"),
                       help="required aud (default: the resource URL, PUBLIC_URL/mcp)")  # fmt: skip
    serve.add_argument("--jwt-tenant-claim", default=_env("JWT_TENANT_CLAIM", "tenant"),
                       help="claim holding the tenant slug (default: tenant)")  # fmt: skip
    serve.add_argument("--oauth-issuer", default=_env("OAUTH_ISSUER"),
                       help="turn on the built-in OAuth authorization server at this public base URL, "
                       "e.g. http://127.0.0.1:8000 (for clients that only speak OAuth)")  # fmt: skip
    serve.add_argument("--public-url", default=_env("PUBLIC_URL"),
                       help="where clients reach this server, e.g. https://mcp.example.com behind a proxy: "
                       "names the resource, the JWT audience and every advertised address")  # fmt: skip
    serve.add_argument("--migration-url", default=_env("MIGRATION_URL"),
                       help="PostgreSQL URL of the tables' owner: migrate before serving (safe when "
                       "replicas start together)")  # fmt: skip
    serve.add_argument("--data-db", default=_env("DATA_URL"),
                       help="PostgreSQL URL of ctx.db's own role (env TENANT_MCP_DATA_URL; required "
                       "on PostgreSQL: that role cannot reach the control plane)")  # fmt: skip
    serve.add_argument("--metrics-address", default=_env("METRICS_ADDRESS"),
                       help="serve Prometheus metrics at HOST:PORT, e.g. 127.0.0.1:9464 (never on the MCP "
                       "port; needs the [metrics] extra)")  # fmt: skip
    serve.add_argument("--metrics-tenants", default=_env("METRICS_TENANTS"),
                       help="comma-separated tenant slugs that get a metrics label of their own "
                       "(everyone else is 'other')")  # fmt: skip
    serve.add_argument("--log-format", default=_env("LOG_FORMAT", "text"), choices=["text", "json"],
                       help="json: one structured line per request on stderr, no access log")  # fmt: skip
    serve.add_argument("--audit-retain", default=_env("AUDIT_RETAIN"), metavar="DURATION",
                       help="delete audit events older than this, hourly (e.g. 90d; default: keep all)")  # fmt: skip
    serve.add_argument("--log-level", default=_env("LOG_LEVEL", "info"),
                       choices=["critical", "error", "warning", "info", "debug"])  # fmt: skip
    serve.add_argument("--access-log", action="store_true", default=_flag("ACCESS_LOG"),
                       help="one uvicorn access line per HTTP request (off: the audit trail has them)")  # fmt: skip
    serve.add_argument("--workers", type=int, default=int(_env("WORKERS", "1") or 1),
                       help="serve from N processes sharing the port (needs --stateless and Redis)")  # fmt: skip
    serve.set_defaults(handler=None, run=_serve)

    p = commands.add_parser(
        "migrate",
        parents=[common],
        help="apply migrations to PostgreSQL as the tables' owner",
        description="Create or upgrade the control-plane and tenant-data tables in PostgreSQL, add "
        "tenant columns, keys and row-level security policies, and grant the server's two roles "
        "their access: the control-plane role (of --db) and the data role of ctx.db (of --data-db), "
        "which gets row access to tenant tables and nothing else. Runs once even when several "
        "processes start together.",
    )
    p.add_argument("app", help="MODULE:ATTR of the TenantMCP whose migrations to apply")
    p.add_argument("--migration-url", default=_env("MIGRATION_URL"),
                   help="owner's PostgreSQL URL (env TENANT_MCP_MIGRATION_URL; default: --db)")  # fmt: skip
    p.add_argument("--app-role", help="control-plane role (default: the role of --db)")
    p.add_argument("--data-role", help="ctx.db's role: row access only (default: the role of --data-db)")
    p.add_argument("--data-db", default=_env("DATA_URL"),
                   help="PostgreSQL URL of ctx.db's role (env TENANT_MCP_DATA_URL)")  # fmt: skip
    p.set_defaults(handler=None, run=_migrate)

    demo = commands.add_parser("demo", parents=[database], help="run the notes example with two demo tenants")
    demo.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    demo.add_argument(
        "--port", type=int, default=8000, help="port (default 8000; checked before anything is printed)"
    )
    demo.set_defaults(handler=None, run=_demo)
    return parser


def _parse(raw: list[str]) -> argparse.Namespace:
    if raw[:1] == ["audit"] and len(raw) > 1 and raw[1] not in ("show", "export", "prune", "-h", "--help"):
        raw = [raw[0], "show", *raw[1:]]  # `audit TENANT`, as before there were actions
    args = build_parser().parse_args(raw)
    args.argv = raw
    args.db_given = (
        any(a == "--db" or a.startswith("--db=") for a in raw) or "TENANT_MCP_DATABASE_URL" in os.environ
    )
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(list(sys.argv[1:] if argv is None else argv))
    try:
        if args.handler is None:
            args.run(args)
        else:
            handler: Handler = args.handler

            async def run() -> None:
                async with _admin(args) as admin:
                    await handler(args, admin)

            asyncio.run(run())
    except (_UsageError, TenantMCPError) as exc:
        print(f"tenant-mcp: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, (_UsageError, ConfigurationError)) else 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
