"""A circuit breaker: stop calling an upstream that keeps failing, then probe it back to health."""

from __future__ import annotations

import contextlib
import enum
import functools
import inspect
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from typing import ParamSpec, TypeVar

__all__ = ["CircuitBreaker", "CircuitOpenError", "Listener", "Permit", "State"]

P = ParamSpec("P")
T = TypeVar("T")

log = logging.getLogger(__name__)


class State(enum.Enum):
    """Where a breaker is in its cycle."""

    CLOSED = "closed"  # calls flow through and their outcomes are counted
    OPEN = "open"  # calls are rejected at once until the recovery timeout has passed
    HALF_OPEN = "half_open"  # a few trial calls probe whether the upstream has recovered


# The members again, as plain module names for the code that runs on every call: on Python
# 3.11, each `State.OPEN` is an enum attribute lookup that costs as much as a function call.
_CLOSED, _OPEN, _HALF_OPEN = State.CLOSED, State.OPEN, State.HALF_OPEN


class CircuitOpenError(Exception):
    """Raised instead of calling the upstream while the breaker rejects calls."""

    def __init__(self, state: State, remaining: float) -> None:
        self.state = state
        # Seconds until an open breaker admits trial calls; 0.0 when it is half-open and every
        # trial slot is taken (a slot frees as soon as a trial finishes). A proxy can turn this
        # into a `Retry-After` header.
        self.remaining = remaining
        if state is State.OPEN:
            message = f"circuit open; trial calls allowed in {remaining:.3f}s"
        else:
            message = "circuit half-open and every trial slot is busy"
        super().__init__(message)


class Permit:
    """Admission of one call; settle it once with record_success, record_failure or release."""

    __slots__ = ("generation", "started", "settled")

    def __init__(self, generation: int, started: float) -> None:
        # The breaker's generation changes on every state transition, so an outcome that
        # arrives after a transition (a stream admitted while closed that ends after the
        # breaker opened) can be recognised as describing an older episode and ignored.
        self.generation = generation
        self.started = started  # clock reading at admission, to measure the call's duration
        self.settled = False


Listener = Callable[["CircuitBreaker", State, State], None]


class CircuitBreaker:
    """Reject calls to one upstream while it keeps failing, then let a few trial calls probe it."""

    def __init__(
        self,
        *,
        failure_threshold: int = 5,
        recovery_timeout: float = 60.0,
        half_open_max_calls: int = 1,
        success_threshold: int = 1,
        excluded_exceptions: tuple[type[BaseException], ...] = (),
        sliding_window_size: int | None = None,
        minimum_calls: int | None = None,
        failure_rate_threshold: float = 50.0,
        slow_call_duration: float | None = None,
        slow_call_rate_threshold: float = 100.0,
        clock: Callable[[], float] = time.monotonic,
        name: str = "",
    ) -> None:
        # Defaults follow pybreaker (5 failures, 60 s) and resilience4j (50 %, 100 %, 60 s).
        if failure_threshold < 1 or half_open_max_calls < 1 or success_threshold < 1:
            raise ValueError("failure, half-open and success thresholds must be at least 1")
        if recovery_timeout < 0:
            raise ValueError("recovery_timeout must not be negative")
        if not (0 < failure_rate_threshold <= 100 and 0 < slow_call_rate_threshold <= 100):
            raise ValueError("rate thresholds are percentages in (0, 100]")
        if sliding_window_size is None and (
            minimum_calls is not None or slow_call_duration is not None
        ):
            raise ValueError("minimum_calls and slow_call_duration need sliding_window_size")
        if sliding_window_size is not None and sliding_window_size < 1:
            raise ValueError("sliding_window_size must be at least 1")
        if minimum_calls is not None and minimum_calls < 1:
            raise ValueError("minimum_calls must be at least 1")
        self.name = name
        self.failure_threshold = failure_threshold
        self.recovery_timeout = recovery_timeout
        self.half_open_max_calls = half_open_max_calls
        self.success_threshold = success_threshold
        self.excluded_exceptions = tuple(excluded_exceptions)
        self.sliding_window_size = sliding_window_size
        # A window never holds more than its size, so a larger minimum could never be met
        # (resilience4j clamps it the same way).
        self.minimum_calls = (
            None
            if sliding_window_size is None
            else min(minimum_calls or sliding_window_size, sliding_window_size)
        )
        self.failure_rate_threshold = failure_rate_threshold
        self.slow_call_duration = slow_call_duration
        self.slow_call_rate_threshold = slow_call_rate_threshold
        self._clock = clock

        # A node agent calls one breaker from many threads; every field below is guarded by
        # this lock, and user code (the protected call, the listeners) never runs under it.
        self._lock = threading.Lock()
        self._state = State.CLOSED
        self._generation = 0
        self._opened_at = 0.0
        self._consecutive_failures = 0  # count mode
        self._window: deque[tuple[bool, bool]] | None = (  # rate mode: (failed, slow) per call
            None if sliding_window_size is None else deque()
        )
        self._window_failures = 0
        self._window_slow = 0
        self._trials_in_flight = 0
        self._trial_successes = 0
        self._listeners: list[Listener] = []
        self._pending: list[tuple[State, State]] = []  # transitions not yet told to listeners

    @property
    def state(self) -> State:
        """The current state; an open breaker whose timeout has passed reports half-open."""
        with self._lock:
            self._refresh()
            state = self._state
        self._notify()
        return state

    def add_listener(self, listener: Listener) -> None:
        """Call `listener(breaker, old_state, new_state)` after every state transition."""
        with self._lock:
            self._listeners.append(listener)

    # --8<-- [start:acquire]
    def acquire(self) -> Permit:
        """Admit one call and return its permit, or raise CircuitOpenError without calling."""
        try:
            with self._lock:
                if self._state is _OPEN:
                    self._refresh()
                now = self._clock()
                if self._state is _OPEN:
                    remaining = self._opened_at + self.recovery_timeout - now
                    raise CircuitOpenError(State.OPEN, max(0.0, remaining))
                if self._state is _HALF_OPEN:
                    # Only K trials at once: a recovering upstream must not be hit by the
                    # whole backlog the moment the timer fires.
                    if self._trials_in_flight >= self.half_open_max_calls:
                        raise CircuitOpenError(State.HALF_OPEN, 0.0)
                    self._trials_in_flight += 1
                return Permit(self._generation, now)
        finally:
            if self._pending:
                self._notify()  # the open -> half-open move above may have happened

    # --8<-- [end:acquire]

    def record_success(self, permit: Permit, duration: float | None = None) -> None:
        """Report that the permitted call succeeded (`duration` defaults to time since acquire)."""
        self._settle(permit, False, duration)

    def record_failure(self, permit: Permit, duration: float | None = None) -> None:
        """Report that the permitted call failed (`duration` defaults to time since acquire)."""
        self._settle(permit, True, duration)

    def release(self, permit: Permit) -> None:
        """Give the permit back without an outcome (excluded error, cancellation)."""
        self._settle(permit, None, None)

    # --8<-- [start:call]
    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Call `fn(*args, **kwargs)` through the breaker and return its result."""
        permit = self.acquire()
        with self._settling(permit):
            return fn(*args, **kwargs)

    async def call_async(
        self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Await `fn(*args, **kwargs)` through the breaker and return its result."""
        permit = self.acquire()
        with self._settling(permit):
            return await fn(*args, **kwargs)

    @contextlib.contextmanager
    def _settling(self, permit: Permit) -> Iterator[None]:
        try:
            yield
        except self.excluded_exceptions:
            # resilience4j's ignoreExceptions: a caller's mistake (a 4xx, say) says nothing
            # about the upstream's health, so it counts as neither success nor failure.
            self.release(permit)
            raise
        except Exception:
            self.record_failure(permit)
            raise
        except BaseException:
            # Cancellation (asyncio.CancelledError) or shutdown: the caller gave up, the
            # upstream did not fail. Free the trial slot without judging the upstream.
            self.release(permit)
            raise
        self.record_success(permit)

    # --8<-- [end:call]

    def __call__(self, fn: Callable[P, T]) -> Callable[P, T]:
        """Decorate a sync or async function so every call goes through the breaker."""
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> object:
                return await self.call_async(fn, *args, **kwargs)

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            return self.call(fn, *args, **kwargs)

        return wrapper

    # --8<-- [start:settle]
    def _settle(self, permit: Permit, failed: bool | None, duration: float | None) -> None:
        with self._lock:
            if permit.settled:
                return  # the first outcome wins, so `finally: release(permit)` is always safe
            permit.settled = True
            if permit.generation != self._generation:
                return  # admitted before the last transition: it describes an older episode
            now = self._clock()
            if duration is None:
                duration = now - permit.started
            slow = self.slow_call_duration is not None and duration > self.slow_call_duration
            if self._state is _HALF_OPEN:
                self._trials_in_flight -= 1
                if failed is None:
                    pass
                elif failed or slow:
                    # One bad trial is enough: the upstream is not back, so wait a full
                    # recovery timeout again before the next probe.
                    self._transition(State.OPEN, now)
                else:
                    self._trial_successes += 1
                    if self._trial_successes >= self.success_threshold:
                        self._transition(State.CLOSED, now)
            elif failed is not None:
                self._count_closed_outcome(failed, slow, now)
        if self._pending:
            self._notify()

    def _count_closed_outcome(self, failed: bool, slow: bool, now: float) -> None:
        if self._window is None:
            # Count mode: only an unbroken run of failures opens the breaker.
            self._consecutive_failures = self._consecutive_failures + 1 if failed else 0
            if self._consecutive_failures >= self.failure_threshold:
                self._transition(State.OPEN, now)
            return
        # Rate mode: the last N outcomes, with running totals (subtract on evict, as
        # resilience4j's count-based window does) so each call costs O(1).
        if len(self._window) == self.sliding_window_size:
            old_failed, old_slow = self._window.popleft()
            self._window_failures -= old_failed
            self._window_slow -= old_slow
        self._window.append((failed, slow))
        self._window_failures += failed
        self._window_slow += slow
        calls = len(self._window)
        if calls < (self.minimum_calls or 1):
            return  # a rate over two calls is noise, not evidence
        # Integer-friendly comparisons: 100 * failures / calls >= threshold.
        if (
            self._window_failures * 100 >= self.failure_rate_threshold * calls
            or self._window_slow * 100 >= self.slow_call_rate_threshold * calls
        ):
            self._transition(State.OPEN, now)

    # --8<-- [end:settle]

    def _refresh(self) -> None:
        # No timer thread or task: the open -> half-open move happens the next time anybody
        # asks, which works the same from threads and from any event loop.
        if self._state is _OPEN:
            now = self._clock()
            if now - self._opened_at >= self.recovery_timeout:
                self._transition(State.HALF_OPEN, now)

    def _transition(self, new: State, now: float) -> None:
        old, self._state = self._state, new
        self._generation += 1
        if new is _OPEN:
            self._opened_at = now
        # Every state starts from a clean slate, as in resilience4j: a breaker that closes
        # again must not reopen on failures counted before it opened.
        self._consecutive_failures = 0
        self._trials_in_flight = 0
        self._trial_successes = 0
        if self._window is not None:
            self._window.clear()
            self._window_failures = self._window_slow = 0
        self._pending.append((old, new))

    def _notify(self) -> None:
        # Listeners run outside the lock, so a slow or re-entrant listener (one that reads
        # `breaker.state`) can neither deadlock nor stall other callers. A thread always sees
        # the transitions it queued itself, so this unlocked emptiness check loses nothing.
        if not self._pending:
            return
        with self._lock:
            pending, self._pending = self._pending, []
            listeners = list(self._listeners)
        for old, new in pending:
            for listener in listeners:
                try:
                    listener(self, old, new)
                except Exception:
                    # A broken metrics hook must not break the traffic it observes.
                    log.exception("circuit breaker %r: listener %r failed", self.name, listener)
