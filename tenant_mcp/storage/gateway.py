"""The PostgreSQL gateway: tool SQL read by PostgreSQL's own grammar and checked against allow-lists.

Row-level security bound to an unforgeable tenant binding (`storage.postgres`) is what keeps
tenants apart; the gateway narrows what tool SQL may try in the first place, so that a careless
or injected statement fails with a clear error instead of probing the database. It parses the
exact text sent to the server with libpg_query (`pglast`), the parser of PostgreSQL itself, so
comments, dollar quoting, ``U&`` names and escapes mean here what they mean there. It then accepts:

- one statement: ``SELECT``, ``INSERT``, ``UPDATE``, ``DELETE``, ``VALUES`` (and ``WITH`` of these);
- no ``INTO``, no ``EXPLAIN``, no DDL, no utility or transaction statement;
- tables of the data schema only (no schema but ``public``, no ``pg_*`` catalogue);
- functions and types from allow-lists: ordinary scalar, string, date, math, aggregate, window,
  array and JSON functions. Anything that runs SQL text, touches settings, roles, files, sequences,
  large objects, locks or catalogues is absent, so it is refused by name.

An application extends the lists with `SQLAllowList` (full-text search, an extension's
functions); every added name is trusted to behave like the defaults.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from tenant_mcp.storage.sql import GatewayRefusal

__all__ = ["FULL_TEXT_SEARCH", "SQLAllowList", "check"]


def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


_STATEMENTS = frozenset({"SelectStmt", "InsertStmt", "UpdateStmt", "DeleteStmt"})

# Node kinds of the statements above that cannot reach beyond their tenant's rows. A node kind not
# listed (XML, cursors, table samples, JSON_TABLE, ...) is refused, so new grammar fails closed.
_NODES = frozenset(
    {
        *_STATEMENTS,
        "A_ArrayExpr",
        "A_Const",
        "A_Expr",
        "A_Indices",
        "A_Indirection",
        "A_Star",
        "Alias",
        "BitString",
        "BoolExpr",
        "Boolean",
        "BooleanTest",
        "CaseExpr",
        "CaseWhen",
        "CoalesceExpr",
        "CollateClause",
        "ColumnDef",  # the column list of a record function (`jsonb_to_record(...) AS x(a int)`)
        "ColumnRef",
        "CommonTableExpr",
        "CTESearchClause",
        "CTECycleClause",
        "Float",
        "FuncCall",
        "GroupingFunc",
        "GroupingSet",
        "IndexElem",
        "InferClause",
        "Integer",
        "JoinExpr",
        "List",
        "LockingClause",
        "MinMaxExpr",
        "MultiAssignRef",
        "NullTest",
        "OnConflictClause",
        "ParamRef",
        "RangeFunction",
        "RangeSubselect",
        "RangeVar",
        "ResTarget",
        "ReturningClause",
        "RowExpr",
        "SQLValueFunction",
        "SetToDefault",
        "SortBy",
        "String",
        "SubLink",
        "TypeCast",
        "TypeName",
        "WindowDef",
        "WithClause",
    }
)

_FUNCTIONS = _names(
    """
    count sum avg min max bool_and bool_or every string_agg array_agg json_agg jsonb_agg
    json_object_agg jsonb_object_agg stddev stddev_pop stddev_samp variance var_pop var_samp
    percentile_cont percentile_disc mode bit_and bit_or bit_xor corr covar_pop covar_samp
    row_number rank dense_rank percent_rank cume_dist ntile lag lead first_value last_value nth_value
    lower upper initcap length char_length character_length octet_length bit_length substr substring
    position strpos trim btrim ltrim rtrim lpad rpad replace translate concat concat_ws left right
    repeat reverse split_part starts_with format md5 sha224 sha256 sha384 sha512 encode decode to_hex
    ascii chr quote_ident quote_literal quote_nullable regexp_replace regexp_match regexp_matches
    regexp_split_to_array regexp_split_to_table regexp_count regexp_like regexp_substr regexp_instr
    string_to_array array_to_string overlay normalize to_char to_number to_date to_timestamp
    convert_from convert_to gen_random_uuid unistr casefold
    abs ceil ceiling floor round trunc sign sqrt cbrt power pow exp ln log log10 mod div pi random
    degrees radians sin cos tan asin acos atan atan2 width_bucket gcd lcm factorial scale
    min_scale trim_scale
    now clock_timestamp statement_timestamp transaction_timestamp date_trunc date_part extract age
    make_date make_time make_timestamp make_timestamptz make_interval justify_days justify_hours
    justify_interval isfinite date_bin timezone
    array_length array_upper array_lower cardinality unnest array_append array_prepend array_cat
    array_remove array_replace array_position array_positions array_dims array_ndims array_fill
    generate_series generate_subscripts trim_array
    json_build_object jsonb_build_object json_build_array jsonb_build_array to_json to_jsonb
    json_object jsonb_object json_array_elements jsonb_array_elements json_array_elements_text
    jsonb_array_elements_text json_each jsonb_each json_each_text jsonb_each_text json_extract_path
    jsonb_extract_path json_extract_path_text jsonb_extract_path_text json_array_length
    jsonb_array_length json_object_keys jsonb_object_keys json_typeof jsonb_typeof jsonb_set
    jsonb_set_lax jsonb_insert jsonb_strip_nulls json_strip_nulls jsonb_pretty jsonb_path_query
    jsonb_path_exists jsonb_path_match jsonb_path_query_array jsonb_path_query_first row_to_json
    array_to_json json_populate_record jsonb_populate_record json_populate_recordset
    jsonb_populate_recordset json_to_record jsonb_to_record json_to_recordset jsonb_to_recordset
    num_nonnulls num_nulls
    like_escape similar_to_escape similar_escape overlaps is_normalized
    """
)

# Full-text search, for `SQLAllowList(functions=FULL_TEXT_SEARCH, types={"tsvector", "tsquery"})`.
# ts_stat and ts_rewrite are not here and never should be: they run SQL given as a string.
FULL_TEXT_SEARCH = _names(
    """
    to_tsvector to_tsquery plainto_tsquery phraseto_tsquery websearch_to_tsquery ts_rank ts_rank_cd
    ts_headline setweight strip numnode querytree tsvector_to_array array_to_tsvector
    """
)

_TYPES = _names(
    """
    bool boolean int2 int4 int8 smallint integer int bigint numeric decimal real float4 float8 float
    double text varchar bpchar char character name bytea date time timetz timestamp timestamptz
    interval uuid json jsonb inet cidr macaddr money bit varbit
    int4range int8range numrange tsrange tstzrange daterange
    """
)


@dataclass(frozen=True)
class SQLAllowList:
    """Functions and types that tool SQL may use beyond the defaults (names, lower case)."""

    functions: frozenset[str] = field(default_factory=frozenset)
    types: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def of(cls, functions: Iterable[str] = (), types: Iterable[str] = ()) -> SQLAllowList:
        return cls(frozenset(f.lower() for f in functions), frozenset(t.lower() for t in types))


def check(sql: str, extra: SQLAllowList | None = None) -> None:
    """Refuse `sql` unless it is one statement the gateway accepts; the error says what is refused."""
    reason = _verdict(sql, extra or _NO_EXTRA)
    if reason is not None:
        raise GatewayRefusal(f"statement refused by the tenant gateway: {reason}")


_NO_EXTRA = SQLAllowList()


@lru_cache(maxsize=2048)
def _verdict(sql: str, extra: SQLAllowList) -> str | None:
    """None when `sql` is accepted, else why not. Cached: tools send the same texts again and again."""
    import pglast  # the postgres extra; SQLAllowList is importable without it

    try:
        statements = pglast.parse_sql(sql)
    except Exception as exc:
        return f"not valid SQL ({_first_line(exc)})"
    if len(statements) != 1:
        return "one statement at a time"
    stmt = statements[0].stmt
    kind = type(stmt).__name__
    if kind not in _STATEMENTS:
        return f"{_describe(kind)} statements are not allowed in ctx.db (only SELECT, INSERT, UPDATE, DELETE)"
    return _walk(stmt, extra)


def _walk(root: Any, extra: SQLAllowList) -> str | None:
    """Check every node of the tree, fields of every kind included (typed fields too)."""
    from pglast.ast import Node

    stack = [root]
    while stack:
        node = stack.pop()
        reason = _node(type(node).__name__, node, extra)
        if reason is not None:
            return reason
        for name in node.__slots__:
            value = getattr(node, name, None)
            if isinstance(value, Node):
                stack.append(value)
            elif isinstance(value, tuple | list):
                stack.extend(v for v in _flatten(value) if isinstance(v, Node))
    return None


def _flatten(values: tuple[Any, ...] | list[Any]) -> list[Any]:
    out: list[Any] = []
    for value in values:
        if isinstance(value, tuple | list):
            out.extend(_flatten(value))
        else:
            out.append(value)
    return out


def _node(kind: str, node: Any, extra: SQLAllowList) -> str | None:
    if kind not in _NODES:
        return f"{_describe(kind)} is not allowed in ctx.db"
    if kind == "SelectStmt" and node.intoClause is not None:
        return "SELECT ... INTO is not allowed in ctx.db"
    if kind == "RangeVar":
        schema, name = node.schemaname, str(node.relname or "")
        if node.catalogname or (schema is not None and schema != "public"):
            return f"table {schema}.{name} is outside the tenant's data"
        if name.lower().startswith("pg_") or node.relpersistence != "p":
            return f"table {name} is outside the tenant's data"
    elif kind == "FuncCall":
        function = _qualified(node.funcname)
        if function is None or (function not in _FUNCTIONS and function not in extra.functions):
            return f"function {_dotted(node.funcname)}() is not allowed in ctx.db"
    elif kind == "TypeName":
        type_name = _qualified(node.names)
        if type_name is None or (type_name not in _TYPES and type_name not in extra.types):
            return f"type {_dotted(node.names)} is not allowed in ctx.db"
    return None


def _qualified(names: tuple[Any, ...] | None) -> str | None:
    """The lower-case name of a function or type, unqualified or in pg_catalog; None otherwise."""
    parts = [str(getattr(n, "sval", "")) for n in names or ()]
    if not parts or len(parts) > 2 or (len(parts) == 2 and parts[0] != "pg_catalog"):
        return None
    return parts[-1].lower()


def _dotted(names: tuple[Any, ...] | None) -> str:
    return ".".join(str(getattr(n, "sval", "?")) for n in names or ())[:80]


_KIND_NAMES = {
    "VariableSetStmt": "SET",
    "VariableShowStmt": "SHOW",
    "TransactionStmt": "transaction control",
    "ExplainStmt": "EXPLAIN",
    "CreateTableAsStmt": "CREATE TABLE AS",
    "MergeStmt": "MERGE",
    "DoStmt": "DO",
    "CopyStmt": "COPY",
}


def _describe(kind: str | None) -> str:
    if kind is None:
        return "an empty statement"
    if kind in _KIND_NAMES:
        return _KIND_NAMES[kind]
    return kind.removesuffix("Stmt").upper() if kind.endswith("Stmt") else kind


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
