"""Hot read queries, run on the DBAPI cursor with SQLAlchemy's own compilation and types.

The pages polled and opened most (the live fragment, the invites list, the signed-in
user of every page) run a few small SELECTs each. SQLAlchemy's execution layer (its
execution context and result objects) cost about three times the query itself there,
measured: ~35 us against ~10 us for a raw cursor. A :class:`PlainSelect` is compiled
once per dialect by SQLAlchemy, binds its parameters and converts its columns with
the statements' own SQLAlchemy types (enums, UTC datetimes), and returns named tuples.
It runs on the connection the session already holds, inside its transaction.
"""
from __future__ import annotations

from collections import namedtuple

from sqlalchemy.engine import Connection
from sqlalchemy.sql import Select


class PlainSelect:
    def __init__(self, statement: Select):
        self.statement = statement
        self._compiled: dict[str, tuple] = {}  # dialect name -> (compiled, bind processors, processors, row type)

    def _for(self, dialect) -> tuple:
        known = self._compiled.get(dialect.name)
        if known is None:
            compiled = self.statement.compile(dialect=dialect)
            if compiled.literal_execute_params or compiled.post_compile_params:
                raise ValueError("PlainSelect runs statements without expanding parameters")
            columns = compiled._result_columns
            processors = [column.type._cached_result_processor(dialect, None) for column in columns]
            row_type = namedtuple("PlainRow", [column.keyname for column in columns], rename=True)
            known = (compiled, compiled._bind_processors, processors if any(processors) else None, row_type)
            self._compiled[dialect.name] = known
        return known

    def all(self, connection: Connection, **values) -> list:
        """The rows, on ``connection`` (in its transaction)."""
        return self.on_dbapi(connection.connection.dbapi_connection, connection.dialect, **values)

    def on_dbapi(self, dbapi_connection, dialect, **values) -> list:
        """The rows, on a DBAPI connection of ``dialect``."""
        compiled, bind_processors, processors, row_type = self._for(dialect)
        params = compiled.construct_params(values)
        for name, process in bind_processors.items():
            if name in params:
                params[name] = process(params[name])
        if compiled.positiontup:
            params = [params[name] for name in compiled.positiontup]
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(compiled.string, params)
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
