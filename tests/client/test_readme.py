"""The README's Python client example runs as written against a real gateway."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from gateway.client import Cursor, connect
from tests.helpers.harness import MakeGateway
from tests.helpers.keys import BYPASS, SECRET

README = Path(__file__).resolve().parents[2] / "README.md"


def example() -> dict[str, Any]:
    """Execute the README's ``python-client`` example; return its namespace."""
    text = README.read_text()
    match = re.search(r"<!-- readme-example: python-client -->\n```python\n(.*?)```", text, re.S)
    assert match is not None, "the README lost its Python client example"
    namespace: dict[str, Any] = {}
    exec(compile(match[1], "README.md", "exec"), namespace)  # noqa: S102 - our own README
    return namespace


async def test_the_readme_example_follows_into_sqlite_and_resumes(
    make_gateway: MakeGateway, tmp_path: Path
) -> None:
    gateway = await make_gateway(require_auth=True, jwt_secret=SECRET, bypass_token=BYPASS)
    url = f"ws://{gateway.base}"
    namespace = example()
    follow: Callable[..., Awaitable[None]] = namespace["follow"]
    write: Callable[[str, str], Awaitable[int]] = namespace["write"]
    db = sqlite3.connect(tmp_path / "todos.db")
    try:
        assert await write(url, BYPASS) == 1
        await follow(url, BYPASS, db, live=False)
        assert db.execute("SELECT id, text FROM todos").fetchall() == [("t1", "hello")]
        async with connect(url, "todos", bypass_token=BYPASS) as store:
            assert await store.commit("todoCreated-v1", {"id": "t2", "text": "again"}) == 2
        # A second run resumes from the saved cursor: event 1 again would break the primary key.
        await follow(url, BYPASS, db, live=False)
        rows = db.execute("SELECT id, text FROM todos ORDER BY id").fetchall()
        assert rows == [("t1", "hello"), ("t2", "again")]
        (saved,) = db.execute("SELECT cursor FROM position").fetchone()
        assert Cursor.parse(saved).seq == 2
    finally:
        db.close()
