"""The test PostgreSQL server (``GATEWAY_TEST_POSTGRES_DSN``) and throwaway schemas on it."""

from __future__ import annotations

import os
import uuid

from tests.helpers.ci import skip_or_fail

POSTGRES_DSN = os.environ.get(
    "GATEWAY_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
)


async def postgres_available() -> str | None:
    """None when the test PostgreSQL answers, else why not."""
    try:
        import asyncpg

        conn = await asyncpg.connect(POSTGRES_DSN, timeout=5)
    except Exception as exc:  # any failure means: no server to test against
        return f"PostgreSQL at {POSTGRES_DSN} is not reachable: {exc}"
    await conn.close()
    return None


async def require_postgres() -> None:
    """Skip without PostgreSQL, except under CI=true, where that is a failure."""
    problem = await postgres_available()
    if problem is not None:
        skip_or_fail(problem)


def fresh_schema() -> str:
    return f"gwtest_{uuid.uuid4().hex[:12]}"


async def drop_schema(schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(POSTGRES_DSN, timeout=5)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()
