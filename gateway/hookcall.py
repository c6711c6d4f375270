"""Calling the Python hooks (``[hooks]``): resolving their targets and running them bounded.

:func:`resolve` imports each ``"package.module:function"`` at start; on reload (SIGHUP) it
re-imports the module with :func:`importlib.reload` (so an edited hook takes effect without a
restart) and resolves the function again; a module that fails to import, or lacks the
function, is a ConfigError and the hooks in force stay.

:class:`HookRunner` calls them. An ``async def`` hook runs on the event loop (it must not
block); a plain function runs on one of the runner's daemon threads, never on the loop. Each
call is bounded by ``[hooks] timeout``: past it the request is refused, whatever the hook
does later (a thread cannot be stopped: it finishes in the background and its answer is
dropped). One store's calls hold at most :data:`PER_STORE` threads at a time, so a hook that
hangs for one store leaves the other threads to the other stores; its further calls wait for
a thread within their own timeout. An exception, a timeout or a return value that is neither
None nor a string refuses (fail closed) and is logged on ``gateway.security`` with its
traceback. What the answer means is :mod:`gateway.hooks` (pure).
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import queue
import sys
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Final

from gateway.errors import ConfigError
from gateway.hooks import HooksConfig, failure_reason, parse_target, verdict

security = logging.getLogger("gateway.security")

# Threads for plain-function hooks (started as needed), and how many one store may hold.
THREADS: Final = 32
PER_STORE: Final = 4


@dataclass(frozen=True, slots=True)
class Hook:
    key: str  # "on_push" or "on_pull"
    target: str  # "package.module:function"
    function: Callable[..., Any]
    is_async: bool
    timeout: float  # seconds a call may take


@dataclass(frozen=True, slots=True)
class Hooks:
    """The hooks in force (one object, swapped whole on reload)."""

    on_push: Hook | None = None
    on_pull: Hook | None = None

    @property
    def active(self) -> bool:
        return self.on_push is not None or self.on_pull is not None


def resolve(config: HooksConfig, *, reload: bool = False) -> Hooks:
    """Import the configured hooks (``reload``: re-import their modules first).

    Raises:
        ConfigError: a target is malformed, its module fails to import, or it names no
            callable.
    """
    modules: dict[str, ModuleType] = {}
    found: dict[str, Hook | None] = {}
    for key in ("on_push", "on_pull"):
        spec: str = getattr(config, key)
        found[key] = _resolve(key, spec, config.timeout, reload, modules) if spec else None
    return Hooks(found["on_push"], found["on_pull"])


def _resolve(
    key: str, spec: str, timeout: float, reload: bool, modules: dict[str, ModuleType]
) -> Hook:
    where = f"hooks.{key}"
    module_name, attr = parse_target(where, spec)
    module = modules.get(module_name)
    if module is None:
        try:
            if reload and module_name in sys.modules:
                importlib.invalidate_caches()
                module = importlib.reload(sys.modules[module_name])
            else:
                module = importlib.import_module(module_name)
        except Exception as exc:  # anything the module's code raises
            security.error("%s: cannot import %s", where, module_name, exc_info=exc)
            raise ConfigError(
                f"{where}: cannot import {module_name}: {type(exc).__name__}: {exc}"
            ) from None
        modules[module_name] = module
    function = getattr(module, attr, None)
    if not callable(function):
        raise ConfigError(f"{where}: {module_name} has no function {attr!r}")
    return Hook(key, spec, function, inspect.iscoroutinefunction(function), timeout)


class _Threads:
    """Daemon threads for plain-function hooks: a hung hook never holds up the process's
    exit (a ThreadPoolExecutor's threads are joined at exit)."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._started = 0
        self._idle = 0

    def submit(self, job: Callable[[], None]) -> None:
        with self._lock:
            grow = self._idle == 0 and self._started < THREADS
            if grow:
                self._started += 1
            else:
                self._idle -= 1
        self._jobs.put(job)
        if grow:
            name = f"gateway-hook-{self._started}"
            threading.Thread(target=self._work, name=name, daemon=True).start()

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            job()
            with self._lock:
                self._idle += 1


class HookRunner:
    """Runs hook calls for the push gate; see the module docstring."""

    def __init__(self) -> None:
        self._threads = _Threads()
        self._busy: dict[str, int] = {}
        self._waiting: dict[str, deque[asyncio.Future[None]]] = {}

    async def call(self, hook: Hook, store_id: str, args: tuple[Any, ...]) -> str | None:
        """The hook's reason to refuse, or None when it allows. Failures are reasons too."""
        timeout = hook.timeout
        try:
            async with asyncio.timeout(timeout) as scope:
                if hook.is_async:
                    result = await hook.function(*args)
                else:
                    result = await self._in_thread(hook, store_id, args)
        except (Exception, SystemExit) as exc:  # sys.exit() in an async hook: a failure too
            timed_out = isinstance(exc, TimeoutError) and scope.expired()
            security.error(
                "hook %s (%s) %s store=%s",
                hook.key,
                hook.target,
                f"timed out after {timeout:g} s" if timed_out else "raised",
                store_id,
                exc_info=exc,
            )
            return failure_reason(hook.key, None if timed_out else exc, timeout)
        reason = verdict(result)
        if reason is not None and not isinstance(result, str | None):
            security.error(
                "hook %s (%s) returned %r store=%s", hook.key, hook.target, type(result), store_id
            )
        return reason

    async def _in_thread(self, hook: Hook, store_id: str, args: tuple[Any, ...]) -> Any:
        await self._acquire(store_id)
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Any] = loop.create_future()

        def settle(result: Any, error: BaseException | None) -> None:
            self._release(store_id)
            if answer.done():  # timed out meanwhile
                return
            if error is not None:
                answer.set_exception(error)
            else:
                answer.set_result(result)

        def job() -> None:
            result: Any = None
            error: BaseException | None = None
            try:
                result = hook.function(*args)
            except BaseException as exc:  # handed to the loop, which logs it
                # SystemExit (sys.exit in a hook) must not stop the server: it is a failure.
                error = exc if isinstance(exc, Exception) else RuntimeError(repr(exc))
            try:
                loop.call_soon_threadsafe(settle, result, error)
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass

        self._threads.submit(job)
        return await answer

    async def _acquire(self, store_id: str) -> None:
        while self._busy.get(store_id, 0) >= PER_STORE:
            waiter = asyncio.get_running_loop().create_future()
            waiters = self._waiting.setdefault(store_id, deque())
            waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake(store_id, waiter)  # pass the thread on to the next call
                raise
            finally:
                if waiter in waiters:
                    waiters.remove(waiter)
                if not waiters:
                    self._waiting.pop(store_id, None)
        self._busy[store_id] = self._busy.get(store_id, 0) + 1

    def _release(self, store_id: str) -> None:
        busy = self._busy[store_id] - 1
        if busy:
            self._busy[store_id] = busy
        else:
            del self._busy[store_id]
        self._wake(store_id, None)

    def _wake(self, store_id: str, passed: asyncio.Future[None] | None) -> None:
        for waiter in self._waiting.get(store_id, ()):
            if waiter is not passed and not waiter.done():
                waiter.set_result(None)
                break
