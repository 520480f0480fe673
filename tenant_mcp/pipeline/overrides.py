"""Refusing every attempt by a client or model to choose the tenant.

The tenant comes from the credential, never from the request. A request that names one anyway
(an argument the item does not declare, a `_meta` key in any namespace, at any depth; a header,
see `tenant_mcp.transports.http`) is refused with a clear error and recorded as an override
attempt. Names are compared as a person reads them (`_fold`), so `Tenant-Id`, `tenant_id`,
`tenantId` and their full-width or Cyrillic look-alikes all match.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Container, Iterator, Mapping
from typing import Any

from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS

from tenant_mcp.call import Call
from tenant_mcp.pipeline.step import Next, Result

# Argument, `_meta` and header names that try to choose a tenant. Compared as a person reads them
# (see `_fold`), so `Tenant-Id`, `tenant_id`, `tenantId` and their look-alikes all match.
TENANT_WORDS = frozenset(
    {
        "tenant", "tenantid", "tenantslug", "tenantname", "org", "orgid", "organization",
        "organizationid", "organisationid", "accountid", "customerid", "workspaceid", "xtenantid",
        "xtenant", "xorgid", "xorganizationid", "xaccountid",
    }
)  # fmt: skip


# Letters of other scripts that look like Latin ones (after casefolding), for the tenant words.
_HOMOGLYPHS = str.maketrans(
    {
        **dict(zip("авеіјкмнопрстухѕԁԛԝһӏ", "abeijkmhonpctyxsdqwhl", strict=True)),  # Cyrillic
        **dict(zip("αβγεηικνορτυχω", "abyenikvoptuxw", strict=True)),  # Greek
        **dict(zip("օսցհոɡıȷ", "oughngij", strict=True)),  # Armenian, Latin extensions
        **dict(zip("ᴀʙᴄᴅᴇꜰɢʜɪᴊᴋʟᴍɴᴏᴘʀꜱᴛᴜᴠᴡʏᴢ", "abcdefghijklmnoprstuvwyz", strict=True)),  # small capitals
    }
)
# Greek capitals that look like Latin ones while their small letters look like others (capital Nu
# is an N, small nu a v): mapped before case folding.
_CAPITALS = str.maketrans(dict(zip("\u039d\u039c\u0397\u03a5\u0396", "nmhyz", strict=True)))
_MAX_DEPTH = 32  # levels of arguments or `_meta` searched for tenant names; deeper is refused


def _fold(name: str) -> str:
    """`name` as a person reads it: compatibility forms (full-width, ligatures) decomposed, accents,
    zero-width and other format characters dropped, case folded, look-alike letters mapped."""
    if name.isascii():
        return name.lower()
    chars = unicodedata.normalize("NFKD", name)
    kept = "".join(c for c in chars if unicodedata.category(c)[0] != "M" and unicodedata.category(c) != "Cf")
    return kept.translate(_CAPITALS).casefold().translate(_HOMOGLYPHS)


_SEPARATORS = re.compile(r"[\W_]+")


def plain_name(name: str) -> str:
    """`name` as a person reads it, without separators: `Tenant_ID` and `tenantId` are both `tenantid`."""
    return _SEPARATORS.sub("", _fold(name))


@functools.lru_cache(maxsize=4096)  # argument names repeat (a list of 1,000 objects has few keys)
def names_tenant(name: str) -> bool:
    """True for a name that selects a tenant: `tenant_id`, `X-Tenant-Id`, `io.acme/tenant`,
    `com.example.tenant_id`, `target_tenant`, their full-width or Cyrillic look-alikes... Separators
    are dropped; the word "tenant" anywhere in the last `/` or `:` segment is enough (fail closed),
    and every dotted suffix of it is tried against the other words (`org_id`, `account_id`...), so
    a namespace in front hides nothing."""
    parts = re.split(r"[/:]", _fold(name))[-1].split(".")
    if "tenant" in _SEPARATORS.sub("", "".join(parts)):
        return True
    return any(_SEPARATORS.sub("", "".join(parts[i:])) in TENANT_WORDS for i in range(len(parts)))


def schema_names(schema: Any) -> set[str]:
    """Every property name declared anywhere in a JSON schema (nested objects, `$defs`, items)."""
    names: set[str] = set()
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, Mapping):
            properties = node.get("properties")
            if isinstance(properties, Mapping):
                names.update(k for k in properties if isinstance(k, str))
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return names


def _suspect(value: Any) -> bool:
    """True if a key under `value` may name a tenant or it nests too deep: the fast walk every
    request takes (no paths built), before `_tenant_keys` says where."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if depth >= _MAX_DEPTH:
            return True
        if isinstance(node, dict):
            for key in node:
                if names_tenant(str(key)):
                    return True
            node = node.values()
        for child in node:
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1))
    return False


def _tenant_keys(value: Any, path: str) -> Iterator[tuple[str, str]]:
    """(path, key) of every mapping key under `value` that names a tenant. Deeper than `_MAX_DEPTH`
    levels is refused rather than left unsearched."""
    if not isinstance(value, dict | list) or not _suspect(value):  # parsed JSON: dicts and lists
        return
    stack: list[tuple[Any, str, int]] = [(value, path, 0)]
    while stack:
        node, where, depth = stack.pop()
        if isinstance(node, dict | list) and depth >= _MAX_DEPTH:
            raise MCPError(code=INVALID_PARAMS, message=f"{path} nested deeper than {_MAX_DEPTH} levels")
        if isinstance(node, dict):
            for key, child in node.items():
                key = str(key)
                if names_tenant(key):
                    yield f"{where}.{key}", key
                stack.append((child, f"{where}.{key}", depth + 1))
        elif isinstance(node, list):
            stack.extend((child, f"{where}[{i}]", depth + 1) for i, child in enumerate(node))


def _declared(call: Call) -> Container[str]:
    """The parameter names the named tool or prompt accepts (none when it is missing or hidden)."""
    entry = call.entry
    if entry is None:
        return ()
    if call.method == "tools/call":
        return schema_names(entry.item.parameters)
    return {a.name for a in entry.item.arguments or ()}


def override(call: Call) -> str | None:
    """Where the request names a tenant (`_meta` keys in any namespace, argument names at any
    depth that the item does not declare), or None."""
    params = call.params
    for where, _ in _tenant_keys(params.get("_meta"), "_meta"):
        return where
    if call.method in ("tools/call", "prompts/get"):
        declared: Container[str] | None = None
        for where, key in _tenant_keys(params.get("arguments"), "arguments"):
            if declared is None:
                declared = _declared(call)
            if key not in declared:
                return where
    return None


class RefuseOverrides:
    """The step that refuses a request naming a tenant, before anything else of it runs."""

    async def __call__(self, call: Call, call_next: Next) -> Result:
        where = override(call)
        if where is not None:
            call.denied = f"tenant override attempt: {where}"
            raise MCPError(
                code=INVALID_PARAMS,
                message=f"'{where}' is not accepted: the server sets the tenant from your credentials",
            )
        return await call_next()
