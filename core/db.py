"""Engine and session factories. Built by entry points only, passed to everything else.

On SQLite every transaction of the ordinary session factory begins IMMEDIATE (it takes the write lock at
BEGIN), so concurrent writers queue instead of failing when a read lock cannot be upgraded. Readers must not
queue behind writers: `make_read_sessionmaker` gives sessions whose transactions begin DEFERRED (a WAL
snapshot, no lock), for code that only reads; they refuse to write. On PostgreSQL their transactions are
the ordinary ones.

`BatchWriter` appends rows (an audit trail of requests, for instance) off the request path: many rows in one
transaction, every `interval` seconds or `max_batch` rows.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from sqlalchemy import event, insert, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import InvalidRequestError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

# execution option read at BEGIN on SQLite: "deferred" for sessions that only read
SQLITE_BEGIN = "tracehub_sqlite_begin"


def make_engine(url: str, *, echo: bool = False) -> AsyncEngine:
    u = make_url(url)
    kwargs: dict = {"echo": echo}
    if u.get_backend_name() == "sqlite":
        if u.database and u.database != ":memory:":
            Path(u.database).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": 30}
    else:
        kwargs.update(pool_size=10, max_overflow=20, pool_pre_ping=True)
    engine = create_async_engine(url, **kwargs)
    if u.get_backend_name() == "sqlite":

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):
            # WAL lets the API read while the worker writes; foreign keys are off by default in SQLite
            dbapi_conn.isolation_level = None  # SQLAlchemy emits BEGIN itself (see _sqlite_begin)
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine.sync_engine, "begin")
        def _sqlite_begin(conn):
            if conn.get_execution_options().get(SQLITE_BEGIN) == "deferred":
                # a reader: a snapshot of the WAL, no lock; it neither waits for writers nor blocks them
                conn.exec_driver_sql("BEGIN")
            else:
                # take the write lock at BEGIN so concurrent writers queue instead of failing on upgrade
                conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def conflict_insert(session: AsyncSession) -> Any:
    """The session's dialect's insert(), which has on_conflict_do_nothing() (PostgreSQL and SQLite alike)."""
    if session.bind.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert
        return pg_insert
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert
    return sqlite_insert


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


class ReadOnlySession(Session):
    """A session that refuses to write (see `make_read_sessionmaker`)."""


@event.listens_for(ReadOnlySession, "before_flush")
def _refuse_flush(session: Session, _ctx: Any, _instances: Any) -> None:
    if session.new or session.deleted or any(session.is_modified(o) for o in session.dirty):
        raise InvalidRequestError("this session only reads (ReadSessionDep / make_read_sessionmaker): "
                                  "write through the ordinary session factory (SessionDep)")


@event.listens_for(ReadOnlySession, "do_orm_execute")
def _refuse_dml(state: Any) -> None:
    if state.is_insert or state.is_update or state.is_delete:
        raise InvalidRequestError("this session only reads (ReadSessionDep / make_read_sessionmaker): "
                                  "write through the ordinary session factory (SessionDep)")


def make_read_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions for code that only reads. On SQLite their transactions begin DEFERRED: a snapshot, no lock,
    so readers neither wait for writers nor hold them up. Same engine and pool as the writers; on PostgreSQL
    nothing differs but the refusal to write (a flush or an INSERT/UPDATE/DELETE raises; the transaction is
    rolled back when the session closes). `session.info["read_only"]` is True: what such a session reads is
    committed, so it may fill the caches of immutable rows."""
    return async_sessionmaker(engine.execution_options(**{SQLITE_BEGIN: "deferred"}), expire_on_commit=False,
                              sync_session_class=ReadOnlySession, info={"read_only": True})


def engine_of(sessionmaker: async_sessionmaker[AsyncSession]) -> AsyncEngine:
    """The engine a session factory is bound to."""
    bind = sessionmaker.kw.get("bind")
    if not isinstance(bind, AsyncEngine):
        raise TypeError("the session factory is not bound to an AsyncEngine")
    return bind


class BatchWriter:
    """Appends rows in batches, off the request path: `add(Model, {column: value})` (a mapped class or a
    Table; keys are column names, Python-side column defaults apply) queues a row (rows are
    written in the order they were added); a background task, started by the first `add`, inserts what is
    queued in one transaction `interval` seconds after the first row arrives, or as soon as `max_batch` rows
    wait. `flush()` writes everything queued so far; `close()` flushes and stops the task (at shutdown).

    A batch the database refuses is written row by row: a row refused while the database answers is logged
    and dropped, the others are written; if the database is away the rows stay queued for the next round.
    At most `max_queued` rows wait; beyond that new rows are dropped, with a warning.
    """

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession] | None = None, *, interval: float = 0.1,
                 max_batch: int = 500, max_queued: int = 100_000) -> None:
        self.sessionmaker = sessionmaker
        self.interval = interval
        self.max_batch = max_batch
        self.max_queued = max_queued
        self.written = 0
        self.dropped = 0
        self._queue: list[tuple[Any, dict[str, Any]]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._queued = asyncio.Event()  # the queue is not empty
        self._full = asyncio.Event()  # a whole batch waits
        self._lock = asyncio.Lock()  # one writer at a time, so rows go in in order
        self._closed = False

    @property
    def pending(self) -> int:
        return len(self._queue)

    def add(self, model: Any, values: dict[str, Any]) -> None:
        if len(self._queue) >= self.max_queued:
            self.dropped += 1
            if self.dropped % 1000 == 1:
                log.warning("batch writer: %d rows waiting, dropping new ones (%d so far): is the database up?",
                            len(self._queue), self.dropped)
            return
        self._queue.append((model, values))
        self._start()
        self._queued.set()
        if len(self._queue) >= self.max_batch:
            self._full.set()

    def _bind_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # first use, or another event loop than before (tests): fresh primitives
            self._loop, self._task = loop, None
            self._queued, self._full, self._lock = asyncio.Event(), asyncio.Event(), asyncio.Lock()

    def _start(self) -> None:
        self._bind_loop()
        if not self._closed and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self._run(), name="batch-writer")

    async def _run(self) -> None:
        while True:
            await self._queued.wait()
            if len(self._queue) < self.max_batch:
                try:  # let a batch gather
                    await asyncio.wait_for(self._full.wait(), self.interval)
                except TimeoutError:
                    pass
            self._full.clear()
            try:
                async with self._lock:
                    while self._queue:
                        if not await self._write_batch():
                            break
            except Exception:  # keep the task alive; the rows stay queued
                log.exception("batch writer: writing failed; %d rows stay queued", len(self._queue))
            if self._queue:  # the database is away: wait a little before trying again
                await asyncio.sleep(min(5.0, self.interval * 10))
            else:
                self._queued.clear()

    async def flush(self) -> None:
        """Write every row queued so far (and wait for a batch being written); raises if the database cannot
        take them."""
        self._bind_loop()
        async with self._lock:
            while self._queue:
                if not await self._write_batch():
                    raise RuntimeError(f"batch writer: the database did not take {len(self._queue)} queued rows")

    async def close(self) -> None:
        """Stop the background task and write what is queued."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None and not task.done() and task.get_loop() is asyncio.get_running_loop():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        if self._queue:
            try:
                await self.flush()
            except Exception:  # shutting down: say what is lost
                log.exception("batch writer: %d rows could not be written at shutdown", len(self._queue))

    async def _write_batch(self) -> bool:
        """Write the oldest batch and take it off the queue; False if the database is away (nothing taken).
        Called under the lock: only this removes rows, from the front, so the indexes hold while awaiting."""
        if self.sessionmaker is None:
            raise RuntimeError("batch writer has no session factory")
        batch = self._queue[: self.max_batch]
        try:
            await self._insert(batch)
        except Exception as exc:  # noqa: BLE001 - one bad row must not hold back the others
            log.warning("batch writer: a batch of %d rows failed (%s); writing them one by one", len(batch), exc)
            for row in batch:
                try:
                    await self._insert([row])
                    self.written += 1
                except Exception:
                    if not await self._database_answers():
                        return False
                    self.dropped += 1
                    log.exception("batch writer: dropped a %s row the database refused: %r",
                                  getattr(row[0], "__name__", row[0]), row[1])
                del self._queue[0]
            return True
        self.written += len(batch)
        del self._queue[: len(batch)]
        return True

    async def _insert(self, rows: list[tuple[Any, dict[str, Any]]]) -> None:
        assert self.sessionmaker is not None
        async with self.sessionmaker() as session, session.begin():
            i = 0
            while i < len(rows):  # consecutive rows of one table: one executemany, in order
                j = i
                while j < len(rows) and rows[j][0] is rows[i][0]:
                    j += 1
                table = getattr(rows[i][0], "__table__", rows[i][0])  # a mapped class or a Table
                await session.execute(insert(table), [v for _, v in rows[i:j]])
                i = j

    async def _database_answers(self) -> bool:
        assert self.sessionmaker is not None
        try:
            async with self.sessionmaker() as session:
                await session.execute(text("SELECT 1"))
            return True
        except Exception:  # noqa: BLE001
            return False


def sync_url(url: str) -> str:
    """The synchronous driver URL for the same database (Alembic runs synchronously)."""
    u = make_url(url)
    if u.drivername == "sqlite+aiosqlite":
        u = u.set(drivername="sqlite")
    return u.render_as_string(hide_password=False)


class FastReader:
    """One-statement reads for the hottest read path (the resolver), without the ORM, a pooled transaction or
    a thread hop. PostgreSQL: up to `size` autocommit psycopg connections, each statement prepared by the server
    after a few runs. SQLite: one sqlite3 connection, read inline on the event loop (a WAL snapshot read takes
    microseconds, less than handing it to a thread). Statements are SQLAlchemy Core, compiled once per dialect.

    `fetchone` raises on any database trouble; callers fall back to their ordinary path, which reports it.
    An in-memory SQLite database cannot be shared, so there `available` is False."""

    def __init__(self, url: str | Any, *, size: int = 4) -> None:
        u = make_url(url) if isinstance(url, str) else url
        self.backend = u.get_backend_name()
        self.size = size
        self._compiled: dict[int, tuple[str, dict[str, Any]]] = {}
        self._sqlite: Any = None
        self._idle: list[Any] = []
        self._open = 0
        self._free = asyncio.Condition()
        if self.backend == "sqlite":
            self._path = u.database
            self.available = bool(u.database) and u.database != ":memory:"
            from sqlalchemy.dialects.sqlite import pysqlite
            self._dialect: Any = pysqlite.dialect(paramstyle="named")
        else:
            self._conninfo = u.set(drivername="postgresql").render_as_string(hide_password=False)
            self.available = True
            from sqlalchemy.dialects.postgresql import psycopg
            self._dialect = psycopg.dialect()

    def _sql(self, stmt: Any) -> tuple[str, dict[str, Any]]:
        hit = self._compiled.get(id(stmt))
        if hit is None:
            c = stmt.compile(dialect=self._dialect)
            hit = self._compiled[id(stmt)] = (str(c), dict(c.params))
        return hit

    async def fetchone(self, stmt: Any, params: dict[str, Any]) -> tuple[Any, ...] | None:
        sql, defaults = self._sql(stmt)
        args = {**defaults, **params}
        if self.backend == "sqlite":
            if self._sqlite is None:
                import sqlite3
                conn = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None, timeout=5)
                conn.execute("PRAGMA query_only=1")
                self._sqlite = conn
            return self._sqlite.execute(sql, args).fetchone()
        conn = await self._checkout()
        ok = False
        try:
            cur = await conn.execute(sql, args)
            row = await cur.fetchone()
            ok = True
            return row
        finally:
            await self._checkin(conn, ok)

    async def open(self) -> None:
        """Connect the whole pool now (at start-up), so the first burst of reads does not wait for connections."""
        if self.backend == "sqlite" or not self.available:
            return
        conns = await asyncio.gather(*(self._checkout() for _ in range(self.size - self._open)),
                                     return_exceptions=True)
        for c in conns:
            if not isinstance(c, BaseException):
                await self._checkin(c, True)

    async def _checkout(self) -> Any:
        import psycopg
        async with self._free:
            while not self._idle and self._open >= self.size:
                await self._free.wait()
            if self._idle:
                return self._idle.pop()
            self._open += 1
        try:
            return await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True, prepare_threshold=2)
        except BaseException:
            async with self._free:
                self._open -= 1
                self._free.notify()
            raise

    async def _checkin(self, conn: Any, ok: bool) -> None:
        async with self._free:
            if ok and not conn.closed:
                self._idle.append(conn)
            else:
                self._open -= 1
                await conn.close()
            self._free.notify()

    async def close(self) -> None:
        if self._sqlite is not None:
            self._sqlite.close()
            self._sqlite = None
        idle, self._idle = self._idle, []
        for conn in idle:
            self._open -= 1
            await conn.close()
