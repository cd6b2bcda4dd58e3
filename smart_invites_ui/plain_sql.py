"""Hot statements, run on the DBAPI cursor with SQLAlchemy's own compilation and types.

The pages polled and opened most (the live fragment, the invites list, the signed-in
user of every page) run a few small SELECTs each, and every status change (a webhook,
a reply email) a few small INSERTs and UPDATEs. SQLAlchemy's execution layer (its
execution context and result objects) cost about three times the statement itself
there, measured: ~35 us against ~10 us for a raw cursor. A :class:`PlainSelect` or a
:class:`PlainWrite` is compiled once per dialect by SQLAlchemy, binds its parameters
and converts its columns with the statement's own SQLAlchemy types (enums, UTC
datetimes); a select returns named tuples. Each runs on the connection the session
already holds, inside its transaction, or (``PlainSelect.read``, for views that only
read) on the read pool, outside any transaction.

What SQLAlchemy's execution would add is refused when the statement is compiled, not
silently skipped: expanding parameters (``IN`` lists), and column defaults and
``onupdate`` values computed in Python (a write names every column it sets).
"""
from __future__ import annotations

import threading
from collections import namedtuple
from datetime import datetime

from flask import Flask, current_app
from sqlalchemy import create_engine, func, type_coerce, types
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import Insert, Select, Update

READ_POOL_SIZE = 4  # connections per web process (its threads), and as many more at busy moments
_READS = "plain_sql.reads"


def init_reads(app: Flask, app_engine: Engine) -> None:
    app.extensions[_READS] = _ReadEngine(app_engine, app.config.get("SQLALCHEMY_ENGINE_OPTIONS") or {})


def dispose_reads(app: Flask) -> None:
    """Close the read pool's connections, when it has a pool of its own (a database server)."""
    app.extensions[_READS].dispose()


def read_engine(app: Flask | None = None) -> Engine:
    """What reads outside the ORM session run on (``PlainSelect.read``, the live poll's check).

    SQLite: the app's engine; a read there takes no transaction anyway (pysqlite begins
    one only before a write). A database server: an engine of its own, in autocommit and
    without pre-ping, so that a read is one round trip. In the ORM session a page that
    only reads paid three more on PostgreSQL (the pre-ping, BEGIN, and ROLLBACK when the
    request ended), and psycopg drops its prepared statements at every rollback, so the
    server parsed and planned every query again. A dead connection is replaced and the
    read tried once more (``PlainSelect.read``)."""
    return (app or current_app).extensions[_READS].engine


class _ReadEngine:
    def __init__(self, app_engine: Engine, options: dict):
        self.app_engine, self.options = app_engine, dict(options)
        self._engine: Engine | None = None
        self._lock = threading.Lock()

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            with self._lock:
                if self._engine is None:  # made at first use: in the web process's workers, after the fork
                    if self.app_engine.dialect.name == "sqlite":
                        self._engine = self.app_engine
                    else:
                        options = dict(self.options, pool_pre_ping=False, isolation_level="AUTOCOMMIT",
                                       pool_size=READ_POOL_SIZE, max_overflow=READ_POOL_SIZE)
                        self._engine = create_engine(self.app_engine.url, **options)
        return self._engine

    def dispose(self) -> None:
        if self._engine is not None and self._engine is not self.app_engine:
            self._engine.dispose()


def _compile(statement, dialect):
    compiled = statement.compile(dialect=dialect)
    if compiled.literal_execute_params or compiled.post_compile_params:
        raise ValueError(f"{type(statement).__name__}: plain statements run without expanding parameters")
    missing = [column.name for column in (*compiled.insert_prefetch, *compiled.update_prefetch)]
    if missing:
        raise ValueError(f"plain writes apply no column defaults: give {', '.join(missing)} a value")
    return compiled


def _binder(compiled):
    """The statement's parameters from a dict of values, converted by the bound columns'
    types, in the order (or as the dict) its DBAPI takes them."""
    processors = compiled._bind_processors
    construct = compiled.construct_params
    if compiled.positiontup:
        plan = [(name, processors.get(name)) for name in compiled.positiontup]

        def bind_positional(values: dict) -> list:
            params = construct(values)
            return [params[name] if process is None else process(params[name]) for name, process in plan]

        return bind_positional
    converted = list(processors.items())

    def bind(values: dict) -> dict:
        params = construct(values)
        for name, process in converted:
            if name in params:
                params[name] = process(params[name])
        return params

    return bind


def connection_lost(dialect, error: BaseException, dbapi_connection) -> bool:
    """Whether ``error`` says the connection is gone (the server restarted, a failover):
    the driver's own errors, which plain statements raise, and SQLAlchemy's wrapped ones."""
    if isinstance(error, DBAPIError):
        return error.connection_invalidated
    return isinstance(error, dialect.loaded_dbapi.Error) and dialect.is_disconnect(error, dbapi_connection, None)


def read_together(*reads: tuple[PlainSelect, dict]) -> list[list]:
    """The rows of each ``(query, values)``, read on one connection of the read pool
    (``read_engine``), outside any transaction. On PostgreSQL they are sent together in
    psycopg's pipeline mode: one round trip for all of them, where each query alone costs
    one (the server's time and the wait for it were most of a page's reads there). A
    dead pooled connection is replaced and the reads tried once more."""
    engine = read_engine()
    dialect = engine.dialect
    for attempt in (1, 2):
        connection = engine.raw_connection()
        dbapi_connection = connection.dbapi_connection
        try:
            pipeline = getattr(dbapi_connection, "pipeline", None)  # psycopg 3
            if pipeline is None or len(reads) == 1:
                return [query.on_dbapi(dbapi_connection, dialect, **values) for query, values in reads]
            with pipeline():
                cursors = [query._send(dbapi_connection, dialect, values) for query, values in reads]
            # Read once the pipeline has ended: leaving it sends the queries' Sync and takes every
            # result in one round trip, where a fetch inside it asks the server to flush first
            # (a round trip of its own) and leaving it then waits for the Sync's answer.
            return [query._rows(cursor, dialect) for (query, _), cursor in zip(reads, cursors)]
        except dialect.loaded_dbapi.Error as exc:
            if attempt == 2 or not connection_lost(dialect, exc, dbapi_connection):
                raise
            connection.invalidate(exc)  # e.g. the server restarted: a new connection, once
        finally:
            connection.close()  # back to the pool
    raise AssertionError("unreachable")


class PlainSelect:
    """A SELECT (or a write with ``RETURNING``) whose rows are read."""

    def __init__(self, statement: Select | Insert | Update):
        self.statement = statement
        self._compiled: dict[str, tuple] = {}  # dialect name -> (compiled, binder, processors, row type)

    def _for(self, dialect) -> tuple:
        known = self._compiled.get(dialect.name)
        if known is None:
            compiled = _compile(self.statement, dialect)
            columns = compiled._result_columns
            processors = [column.type._cached_result_processor(dialect, None) for column in columns]
            row_type = namedtuple("PlainRow", [column.keyname for column in columns], rename=True)
            known = (compiled, _binder(compiled), processors if any(processors) else None, row_type)
            self._compiled[dialect.name] = known
        return known

    def all(self, connection: Connection, **values) -> list:
        """The rows, on ``connection`` (in its transaction)."""
        return self.on_dbapi(connection.connection.dbapi_connection, connection.dialect, **values)

    def on_dbapi(self, dbapi_connection, dialect, **values) -> list:
        """The rows, on a DBAPI connection of ``dialect``."""
        return self._rows(self._send(dbapi_connection, dialect, values), dialect)

    def _send(self, dbapi_connection, dialect, values: dict):
        """The query sent; its cursor, for ``_rows``."""
        compiled, bind, _, _ = self._for(dialect)
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(compiled.string, bind(values))
        except BaseException:
            cursor.close()
            raise
        return cursor

    def _rows(self, cursor, dialect) -> list:
        _, _, processors, row_type = self._for(dialect)
        try:
            rows = cursor.fetchall()
        finally:
            cursor.close()
        make = row_type._make
        if processors is None:
            return [make(row) for row in rows]
        return [make([value if process is None else process(value) for process, value in zip(processors, row)])
                for row in rows]

    def first(self, connection: Connection, **values):
        rows = self.all(connection, **values)
        return rows[0] if rows else None

    def scalar(self, connection: Connection, **values):
        row = self.first(connection, **values)
        return None if row is None else row[0]

    def read(self, **values) -> list:
        """The rows, read on the read pool (``read_engine``) outside any transaction: what is
        committed when the query runs, as every read on SQLite sees. For what views that only
        read show; a view that has written reads its own changes with ``all`` on the session's
        connection."""
        return read_together((self, values))[0]

    def read_first(self, **values):
        rows = self.read(**values)
        return rows[0] if rows else None

    def read_scalar(self, **values):
        row = self.read_first(**values)
        return None if row is None else row[0]


class PlainWrite:
    """An INSERT or UPDATE run for its effect: ``execute`` one row of values, ``execute_many``
    several. An INSERT is compiled inline (the new row's id is not fetched); to read it,
    use a :class:`PlainSelect` of the statement with ``RETURNING``."""

    def __init__(self, statement: Insert | Update):
        self.statement = statement.inline() if isinstance(statement, Insert) else statement
        self._compiled: dict[str, tuple] = {}  # dialect name -> (compiled, binder)

    def _for(self, dialect) -> tuple:
        known = self._compiled.get(dialect.name)
        if known is None:
            compiled = _compile(self.statement, dialect)
            if compiled._result_columns:
                raise ValueError("PlainWrite returns no rows: run a statement with RETURNING as a PlainSelect")
            known = self._compiled[dialect.name] = (compiled, _binder(compiled))
        return known

    def execute(self, connection: Connection, **values) -> int:
        """Run once on ``connection`` (in its transaction); the number of rows written."""
        compiled, bind = self._for(connection.dialect)
        cursor = connection.connection.dbapi_connection.cursor()
        try:
            cursor.execute(compiled.string, bind(values))
            return cursor.rowcount
        finally:
            cursor.close()

    def execute_many(self, connection: Connection, rows: list[dict]) -> None:
        """Run once per dict of values in ``rows``."""
        compiled, bind = self._for(connection.dialect)
        cursor = connection.connection.dbapi_connection.cursor()
        try:
            if len(rows) == 1:
                cursor.execute(compiled.string, bind(rows[0]))
            else:
                cursor.executemany(compiled.string, [bind(row) for row in rows])
        finally:
            cursor.close()


class JsonRows(types.TypeDecorator):
    """What ``json_rows`` reads: the rows of its query, as the named tuples a
    :class:`PlainSelect` of that query gives, each column converted by its own type."""

    impl = types.JSON
    cache_ok = False  # it holds its query's columns (plain statements are compiled once anyway)

    def __init__(self, query: Select):
        super().__init__()
        self.columns = [(column.key, column.type) for column in query.selected_columns]
        self.row_type = namedtuple("PlainRow", [key for key, _ in self.columns], rename=True)

    def result_processor(self, dialect, coltype):
        load = self.impl_instance.dialect_impl(dialect).result_processor(dialect, coltype)
        converters = [_from_json(type_, dialect) for _, type_ in self.columns]
        make = self.row_type._make

        def process(value):
            if load is not None:
                value = load(value)
            if value is None:  # no rows
                return []
            return [make([item if convert is None or item is None else convert(item)
                          for convert, item in zip(converters, row)]) for row in value]

        return process


def _from_json(type_, dialect):
    """A column's value as JSON gives it, converted as the column's own value would be: a
    timestamp is an ISO string there."""
    process = type_._cached_result_processor(dialect, None)
    impl = type_.impl_instance if isinstance(type_, types.TypeDecorator) else type_
    if not isinstance(impl, types.DateTime):
        return process
    if process is None:
        return datetime.fromisoformat
    return lambda value: process(datetime.fromisoformat(value))


def json_rows(query: Select):
    """PostgreSQL: the rows of ``query``, in its ORDER BY, as one JSON array of arrays: a
    column of another query (which a :class:`PlainSelect` reads back as ``query``'s rows,
    ``JsonRows``). Several such columns read several queries' rows in one statement, where
    each query costs a statement of its own (its execution, its result) on both sides."""
    from sqlalchemy.dialects.postgresql import aggregate_order_by

    row = func.json_build_array(*query.selected_columns)
    order = query._order_by_clauses
    rows = func.json_agg(aggregate_order_by(row, *order) if order else row)
    return type_coerce(query.with_only_columns(rows).order_by(None).scalar_subquery(), JsonRows(query))
