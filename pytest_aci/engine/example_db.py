"""Where each item's failures are kept between runs: Hypothesis's example database, shared when asked.

``--aci-example-db redis://host:6379/0`` (Hypothesis's own ``RedisExampleDatabase``) or a directory on
a shared volume makes a failure found by any run replay first in every later run, on any machine;
entries are keyed by node id (``ItemDatabase``). A store that cannot be reached is a warning
and the local database, never a failed or silently passing item.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable
from datetime import timedelta

from hypothesis.database import DirectoryBasedExampleDatabase, ExampleDatabase

REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
KEY_PREFIX = b"pytest-aci:"
KEEP_FOR = timedelta(days=90)  # a failure not seen again for this long is forgotten by the store


class SharedDatabaseWarning(UserWarning):
    """The shared example database could not be reached: the run goes on with the local one."""


def display(where: str) -> str:
    """The store's address without a password (``redis://:secret@host`` → ``redis://***@host``)."""
    return re.sub(r"(?<=://)[^@/]*@", "***@", where)


class SessionDatabase:
    """The session's store of failures: ``--aci-example-db`` (opened once, on first use), else the settings
    profile's database (None: the profile keeps none)."""

    def __init__(self, where: str | None):
        self.where = where
        self._opened: ExampleDatabase | None = None

    def for_profile(self, profile_database: ExampleDatabase | None) -> ExampleDatabase | None:
        if not self.where:
            return profile_database
        if self._opened is None:
            local = profile_database or DirectoryBasedExampleDatabase(".hypothesis/examples")
            self._opened = open_shared(self.where, local)
        return self._opened


def open_shared(where: str, local: ExampleDatabase) -> ExampleDatabase:
    """The database ``--aci-example-db`` names, falling back to ``local`` (with a warning) when unreachable."""
    try:
        shared = _connect(where)
    except Exception as exc:  # noqa: BLE001 - any failure to reach the store means: fall back, say so
        _warn(where, exc)
        return local
    return FallbackDatabase(shared, local, where)


def _connect(where: str) -> ExampleDatabase:
    if where.startswith(REDIS_SCHEMES):
        try:
            import redis
        except ImportError:
            raise RuntimeError("the redis package is not installed (pip install 'hypothesis[redis]')") from None
        from hypothesis.extra.redis import RedisExampleDatabase

        client = redis.Redis.from_url(where, socket_connect_timeout=3, socket_timeout=10)
        client.ping()
        return RedisExampleDatabase(client, expire_after=KEEP_FOR, key_prefix=KEY_PREFIX)
    return DirectoryBasedExampleDatabase(where)


def _warn(where: str, exc: BaseException) -> None:
    problem = display(str(exc))
    message = f"--aci-example-db {display(where)}: cannot be reached ({type(exc).__name__}: {problem}); "
    warnings.warn(SharedDatabaseWarning(message + "using the local example database"), stacklevel=3)


class FallbackDatabase(ExampleDatabase):
    """The shared store while it answers; after its first error (warned once), the local database."""

    def __init__(self, shared: ExampleDatabase, local: ExampleDatabase, where: str):
        super().__init__()
        self.shared, self.local, self.where = shared, local, where
        self.failed = False

    def _use(self, name: str, *args):
        if not self.failed:
            try:
                result = getattr(self.shared, name)(*args)
                return list(result) if name == "fetch" else result
            except Exception as exc:  # noqa: BLE001 - the store went away mid-run
                self.failed = True
                _warn(self.where, exc)
        return getattr(self.local, name)(*args)

    def save(self, key: bytes, value: bytes) -> None:
        self._use("save", key, value)

    def fetch(self, key: bytes) -> Iterable[bytes]:
        return self._use("fetch", key)

    def delete(self, key: bytes, value: bytes) -> None:
        self._use("delete", key, value)

    def move(self, src: bytes, dest: bytes, value: bytes) -> None:
        self._use("move", src, dest, value)


class ItemDatabase(ExampleDatabase):
    """Namespace a Hypothesis example database by node id, so each item replays its own failures first."""

    def __init__(self, base: ExampleDatabase, nodeid: str):
        super().__init__()
        self.base, self.prefix = base, nodeid.encode() + b"\x00"

    def save(self, key: bytes, value: bytes) -> None:
        self.base.save(self.prefix + key, value)

    def fetch(self, key: bytes) -> Iterable[bytes]:
        return self.base.fetch(self.prefix + key)

    def delete(self, key: bytes, value: bytes) -> None:
        self.base.delete(self.prefix + key, value)

    def move(self, src: bytes, dest: bytes, value: bytes) -> None:
        self.base.move(self.prefix + src, self.prefix + dest, value)
