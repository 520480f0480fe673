"""The PostgreSQL gateway's checker (`tenant_mcp.storage.gateway`), statement by statement: what
ordinary tool SQL needs passes, and each refusal names what it refused. The same statements are
attacked end to end, against a real database, in test_pg_attacks."""

from __future__ import annotations

import pytest

from tenant_mcp.storage.gateway import FULL_TEXT_SEARCH, SQLAllowList, check
from tenant_mcp.storage.sql import GatewayRefusal

ALLOWED = [
    "SELECT 1",
    "SELECT id, value FROM items WHERE value LIKE $1 ORDER BY id DESC NULLS LAST LIMIT 10 OFFSET 5",
    "SELECT * FROM public.items",
    "SELECT * FROM ONLY items",
    "SELECT DISTINCT ON (owner) owner, value FROM items",
    "SELECT owner, count(*) FILTER (WHERE value <> '') FROM items GROUP BY ROLLUP (owner) HAVING count(*) > 1",
    "SELECT row_number() OVER w, lag(value) OVER w FROM items WINDOW w AS (PARTITION BY owner ORDER BY id)",
    "SELECT i.value, s.n FROM items i JOIN LATERAL (SELECT count(*) AS n FROM items) s ON true",
    "WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t WHERE n < 5) SELECT n FROM t",
    "WITH d AS (DELETE FROM items WHERE id = $1 RETURNING id) SELECT count(*) FROM d",
    "SELECT 1 UNION SELECT 2 INTERSECT SELECT 2 EXCEPT SELECT 3",
    "VALUES (1, 'a'), (2, 'b')",
    "SELECT * FROM items FOR UPDATE SKIP LOCKED",
    "INSERT INTO items (id, owner, value) VALUES ($1, $2, $3) RETURNING id",
    "INSERT INTO items DEFAULT VALUES",
    "INSERT INTO items (id, value) VALUES (1, 'a') ON CONFLICT (id) DO UPDATE SET value = excluded.value",
    "INSERT INTO items (id, value) SELECT id + 100, value FROM items",
    "UPDATE items SET (owner, value) = ('a', 'b') WHERE id = 1",
    "UPDATE items SET value = DEFAULT FROM items AS other WHERE items.id = other.id",
    "DELETE FROM items USING items AS other WHERE items.id = other.id",
    "SELECT CASE WHEN value IS NULL THEN 'none' ELSE upper(value) END FROM items",
    "SELECT coalesce(NULL, 1), nullif(1, 2), greatest(1, 2), least(1, 2)",
    "SELECT value IS DISTINCT FROM 'a', value BETWEEN 'a' AND 'b', value IN ('a', 'b') FROM items",
    "SELECT EXISTS (SELECT 1 FROM items), ARRAY(SELECT id FROM items), (ARRAY[1, 2])[1], (SELECT 1)",
    "SELECT '1'::int, CAST('1.5' AS double precision), '{1,2}'::int[], '1'::pg_catalog.int8",
    "SELECT interval '1 day', timestamp with time zone '2026-01-01', now() AT TIME ZONE 'UTC'",
    "SELECT current_date, current_timestamp, extract(year FROM now()), date_trunc('day', now())",
    "SELECT substring('abc' FROM 1 FOR 2), position('b' IN 'abc'), trim(both 'x' FROM 'xax')",
    "SELECT 'a' LIKE 'b' ESCAPE '!', 'a' SIMILAR TO 'b', 'a' ~* 'A', 'a' COLLATE \"C\"",
    "SELECT (now(), now()) OVERLAPS (now(), now())",
    "SELECT jsonb_build_object('a', 1) -> 'a', '{\"a\": 1}'::jsonb ->> 'a', to_jsonb(items) FROM items",
    "SELECT * FROM unnest(ARRAY[1, 2]) WITH ORDINALITY AS u(v, n)",
    "SELECT * FROM generate_series(1, 3) AS g",
    "SELECT LOWER(value), pg_catalog.upper(value) FROM items",  # function names in any case
    "SELECT string_agg(value, ',' ORDER BY id) FROM items",
    "SELECT 1;",
]


@pytest.mark.parametrize("sql", ALLOWED)
def test_ordinary_tool_sql_passes(sql: str) -> None:
    check(sql)


REFUSED = [
    # more or less than one statement
    ("", "one statement at a time"),
    ("SELECT 1; SELECT 2", "one statement at a time"),
    ("SELECT 1 /* /* */ ' */; SELECT 2", "one statement at a time"),
    ("SELEKT 1", "not valid SQL"),
    # statement kinds
    ("EXPLAIN SELECT 1", "EXPLAIN statements are not allowed"),
    ("SET ROLE postgres", "SET statements are not allowed"),
    ("SHOW ALL", "SHOW statements are not allowed"),
    ("BEGIN", "transaction control statements are not allowed"),
    ("COPY items TO STDOUT", "COPY statements are not allowed"),
    ("DO $$ BEGIN END $$", "DO statements are not allowed"),
    ("MERGE INTO items USING items AS s ON false WHEN NOT MATCHED THEN DO NOTHING", "MERGE statements"),
    ("CREATE TABLE items_copy AS SELECT * FROM items", "CREATE TABLE AS statements"),
    ("CREATE TABLE stolen (id int)", "CREATE statements are not allowed"),
    ("TRUNCATE items", "TRUNCATE statements are not allowed"),
    ("SELECT * INTO items_copy FROM items", "SELECT ... INTO is not allowed"),
    # tables outside the tenant's data
    ("SELECT * FROM tenant_mcp.tenants", "table tenant_mcp.tenants is outside"),
    ('SELECT * FROM "PUBLIC".items', "table PUBLIC.items is outside"),
    ("SELECT * FROM test.public.items", "is outside the tenant's data"),
    ("SELECT * FROM pg_roles", "table pg_roles is outside"),
    ('SELECT * FROM "PG_Roles"', "table PG_Roles is outside"),
    ("SELECT * FROM pg_temp.items", "table pg_temp.items is outside"),
    ("SELECT * FROM information_schema.tables", "table information_schema.tables is outside"),
    ("SELECT (SELECT slug FROM tenant_mcp.tenants LIMIT 1)", "table tenant_mcp.tenants"),
    ("WITH x AS (SELECT * FROM tenant_mcp.api_keys) SELECT * FROM x", "table tenant_mcp.api_keys"),
    ("UPDATE tenant_mcp.api_keys SET revoked_at = NULL", "table tenant_mcp.api_keys"),
    ('SELECT * FROM U&"tenant\\005fmcp".tenants', "table tenant_mcp.tenants"),
    # functions and types off the lists
    ("SELECT set_config('role', 'postgres', true)", "function set_config() is not allowed"),
    ("SELECT current_setting('tenant_mcp.binding')", "function current_setting()"),
    ("SELECT query_to_xml('select 1', true, false, '')", "function query_to_xml()"),
    ("SELECT ts_stat('SELECT 1')", "function ts_stat()"),
    ("SELECT public.lower('a')", "function public.lower()"),
    ("SELECT pg_catalog.pg_sleep(1)", "function pg_catalog.pg_sleep()"),
    ("SELECT * FROM items WHERE value = ANY(SELECT pg_read_file('/etc/passwd'))", "function pg_read_file()"),
    ("SELECT 'tenant_mcp.tenants'::regclass", "type regclass is not allowed"),
    ("SELECT CAST(1 AS public.money2)", "type public.money2"),
    ("SELECT to_tsvector('a')", "function to_tsvector()"),  # only with FULL_TEXT_SEARCH
    # grammar that is not on the node list fails closed
    ("SELECT * FROM items TABLESAMPLE SYSTEM (50)", "RangeTableSample is not allowed"),
    ("SELECT xmlparse(document '<x/>')", "XmlExpr is not allowed"),
    ("SELECT * FROM items WHERE value IS JSON", "JsonIsPredicate is not allowed"),
]


@pytest.mark.parametrize(("sql", "reason"), REFUSED)
def test_refusals_say_what_was_refused(sql: str, reason: str) -> None:
    with pytest.raises(GatewayRefusal) as refused:
        check(sql)
    message = str(refused.value)
    assert message.startswith("statement refused by the tenant gateway: ")
    assert reason in message


def test_an_allow_list_adds_functions_and_types_and_nothing_else() -> None:
    search = SQLAllowList.of(functions=FULL_TEXT_SEARCH, types={"TSVector", "tsquery"})
    assert "tsvector" in search.types  # names are compared in lower case
    check("SELECT ts_rank(to_tsvector(value), 'a'::tsquery) FROM items", search)
    with pytest.raises(GatewayRefusal, match="function to_tsvector"):
        check("SELECT to_tsvector(value) FROM items")  # the defaults stay as they were
    with pytest.raises(GatewayRefusal, match="function ts_stat"):
        check("SELECT ts_stat('SELECT 1')", search)
    with pytest.raises(GatewayRefusal, match="outside the tenant's data"):
        check("SELECT to_tsvector(slug) FROM tenant_mcp.tenants", search)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM jsonb_to_record('{\"a\": 1}') AS x(a int)",
        "SELECT x.a, x.b FROM json_to_recordset('[]') AS x(a int, b text COLLATE \"C\")",
    ],
)
def test_allowed_record_functions_take_their_column_list(sql: str) -> None:
    """`jsonb_to_record` and friends are on the list, and PostgreSQL requires a column list with them."""
    check(sql)


def test_a_column_list_cannot_smuggle_a_type_off_the_list() -> None:
    with pytest.raises(GatewayRefusal, match="type regclass"):
        check("SELECT * FROM jsonb_to_record('{}') AS x(a regclass)")
