"""A small typed description of tables, and its rendering as SQLite and PostgreSQL DDL.

The control plane's tables are declared once (`controlplane.tables`) and the DDL of both backends
is generated from that, so the two can no longer drift apart. Columns carry logical types; the
renderers choose the dialect's type (a time as REAL is 32-bit on PostgreSQL, so it becomes
DOUBLE PRECISION there; SQLite's INTEGER is 64-bit, PostgreSQL's BIGINT is). Migration steps are
operations on these tables, rendered per dialect into the statements of one schema version.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

Dialect = Literal["sqlite", "postgresql"]
DIALECTS: frozenset[Dialect] = frozenset({"sqlite", "postgresql"})
LogicalType = Literal["text", "integer", "real", "blob"]

_TYPES: dict[Dialect, dict[LogicalType, str]] = {
    "sqlite": {"text": "TEXT", "integer": "INTEGER", "real": "REAL", "blob": "BLOB"},
    "postgresql": {"text": "TEXT", "integer": "BIGINT", "real": "DOUBLE PRECISION", "blob": "BYTEA"},
}


@dataclass(frozen=True, slots=True)
class References:
    """A foreign key: ``REFERENCES table(column) ON DELETE action``."""

    table: str
    column: str = "id"
    on_delete: Literal["CASCADE", "SET NULL", "RESTRICT"] = "CASCADE"


@dataclass(frozen=True, slots=True)
class Column:
    """One column. Not null unless `null`; `identity` numbers rows by itself (SQLite's rowid, which
    needs the column to be the table's INTEGER primary key; an identity column on PostgreSQL)."""

    name: str
    type: LogicalType
    null: bool = False
    default: str | int | None = None
    unique: bool = False
    references: References | None = None
    choices: tuple[str, ...] = ()  # CHECK (name IN (...))
    identity: bool = False
    dialects: frozenset[Dialect] = DIALECTS  # a column one backend does without (SQLite has rowid)


@dataclass(frozen=True, slots=True)
class Index:
    name: str
    columns: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Table:
    """A table: its columns in order, its primary key (one column: declared on the column, as
    SQLite needs for a rowid alias; none: empty), unique column sets and indexes."""

    name: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...] = ()
    unique: tuple[tuple[str, ...], ...] = ()
    indexes: tuple[Index, ...] = ()

    def __post_init__(self) -> None:
        names = [c.name for c in self.columns]
        if len(set(names)) != len(names):
            raise ValueError(f"table {self.name}: a column is declared twice")
        for cols in (self.primary_key, *self.unique, *(i.columns for i in self.indexes)):
            if not set(cols) <= set(names):
                raise ValueError(f"table {self.name}: a key or index names a column it does not have")
        for c in self.columns:
            if c.identity and "sqlite" in c.dialects and (self.primary_key, c.type) != ((c.name,), "integer"):
                raise ValueError(
                    f"table {self.name}: on SQLite, identity column {c.name} must be the INTEGER key"
                )

    def with_column(self, column: Column) -> Table:
        return Table(self.name, (*self.columns, column), self.primary_key, self.unique, self.indexes)


@dataclass(frozen=True, slots=True)
class CreateTable:
    table: Table
    dialects: frozenset[Dialect] = DIALECTS


@dataclass(frozen=True, slots=True)
class AddColumn:
    """``ALTER TABLE ... ADD COLUMN``, within what SQLite can add to a table with rows."""

    table: str
    column: Column

    def __post_init__(self) -> None:
        c = self.column
        if c.unique or c.identity or (not c.null and c.default is None):
            raise ValueError(
                f"column {self.table}.{c.name}: SQLite adds no UNIQUE or identity column, nor a NOT NULL one "
                "without a default; create a new table instead"
            )


Operation = CreateTable | AddColumn


@dataclass(frozen=True, slots=True)
class Step:
    """One migration step. `postgres_version=False`: on PostgreSQL the step belongs to the version
    before it (PostgreSQL support began when SQLite had several steps, created as one there)."""

    operations: tuple[Operation, ...]
    postgres_version: bool = True


def _literal(value: str | int) -> str:
    return str(value) if isinstance(value, int) else "'" + value.replace("'", "''") + "'"


def render_column(column: Column, dialect: Dialect, *, primary_key: bool = False) -> str:
    parts = [column.name, _TYPES[dialect][column.type]]
    if column.identity and dialect == "postgresql":
        parts.append("GENERATED ALWAYS AS IDENTITY")
    if primary_key:
        parts.append("PRIMARY KEY")
    elif not column.null and not column.identity:
        # Key and identity columns keep the DDL of existing databases: PostgreSQL implies NOT NULL
        # there; SQLite only for an INTEGER key (the store never writes a NULL key).
        parts.append("NOT NULL")
    if column.unique:
        parts.append("UNIQUE")
    if column.default is not None:
        parts.append(f"DEFAULT {_literal(column.default)}")
    if column.references is not None:
        ref = column.references
        parts.append(f"REFERENCES {ref.table}({ref.column}) ON DELETE {ref.on_delete}")
    if column.choices:
        parts.append(f"CHECK ({column.name} IN ({', '.join(_literal(c) for c in column.choices)}))")
    return " ".join(parts)


def render_table(table: Table, dialect: Dialect) -> list[str]:
    """``CREATE TABLE`` and ``CREATE INDEX`` statements of `table` for `dialect`."""
    inline = table.primary_key[0] if len(table.primary_key) == 1 else None
    lines = [
        render_column(c, dialect, primary_key=c.name == inline)
        for c in table.columns
        if dialect in c.dialects
    ]
    if len(table.primary_key) > 1:
        lines.append(f"PRIMARY KEY ({', '.join(table.primary_key)})")
    lines.extend(f"UNIQUE ({', '.join(cols)})" for cols in table.unique)
    body = ",\n    ".join(lines)
    return [
        f"CREATE TABLE {table.name} (\n    {body}\n)",
        *(f"CREATE INDEX {i.name} ON {table.name}({', '.join(i.columns)})" for i in table.indexes),
    ]


def render_operation(operation: Operation, dialect: Dialect) -> list[str]:
    if isinstance(operation, CreateTable):
        return render_table(operation.table, dialect) if dialect in operation.dialects else []
    if dialect not in operation.column.dialects:
        return []
    return [f"ALTER TABLE {operation.table} ADD COLUMN {render_column(operation.column, dialect)}"]


def versions(steps: Sequence[Step], dialect: Dialect) -> tuple[tuple[str, ...], ...]:
    """The statements of each schema version of `dialect`, oldest first."""
    out: list[list[str]] = []
    for step in steps:
        statements = [s for op in step.operations for s in render_operation(op, dialect)]
        if out and dialect == "postgresql" and not step.postgres_version:
            out[-1].extend(statements)
        else:
            out.append(statements)
    return tuple(tuple(v) for v in out)


def current_tables(steps: Iterable[Step], dialect: Dialect) -> dict[str, Table]:
    """The tables of `dialect` once every step has run, by name."""
    tables: dict[str, Table] = {}
    for step in steps:
        for op in step.operations:
            if isinstance(op, CreateTable):
                if dialect in op.dialects:
                    tables[op.table.name] = op.table
            elif dialect in op.column.dialects:
                tables[op.table] = tables[op.table].with_column(op.column)
    return tables
