"""Exercise 01: a circuit breaker. Fill in every method that raises NotImplementedError.

Read README.md in this folder for the steps; grade your work with:

    pytest exercises/01_circuit_breaker
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

__all__ = ["CircuitBreaker", "CircuitOpenError", "Listener", "Permit", "State"]

P = ParamSpec("P")
T = TypeVar("T")


class State(enum.Enum):
    """Where a breaker is in its cycle (given: nothing to do here)."""

    CLOSED = "closed"  # calls flow through and their outcomes are counted
    OPEN = "open"  # calls are rejected at once until the recovery timeout has passed
    HALF_OPEN = "half_open"  # a few trial calls probe whether the upstream has recovered


class CircuitOpenError(Exception):
    """Raised instead of calling the upstream while the breaker rejects calls (given)."""

    def __init__(self, state: State, remaining: float) -> None:
        self.state = state
        # Seconds until an open breaker admits trial calls; 0.0 when it is half-open and every
        # trial slot is taken.
        self.remaining = remaining
        if state is State.OPEN:
            message = f"circuit open; trial calls allowed in {remaining:.3f}s"
        else:
            message = "circuit half-open and every trial slot is busy"
        super().__init__(message)


class Permit:
    """Admission of one call; settle it once with record_success, record_failure or release.

    Given as a starting point: `acquire` creates one per admitted call. You may add fields.
    `generation` is there for step 3: which state episode of the breaker admitted the call.
    """

    __slots__ = ("generation", "started", "settled")

    def __init__(self, generation: int, started: float) -> None:
        self.generation = generation
        self.started = started  # clock reading at admission, to measure the call's duration
        self.settled = False


Listener = Callable[["CircuitBreaker", State, State], None]


class CircuitBreaker:
    """Reject calls to one upstream while it keeps failing, then let a few trial calls probe it.

    Configuration (keyword-only):
      failure_threshold: consecutive failures that open a closed breaker (count mode).
      recovery_timeout: seconds an open breaker waits before it turns half-open.
      half_open_max_calls: K, the trial calls a half-open breaker admits at the same time.
      success_threshold: M, the trial successes that close a half-open breaker.
      excluded_exceptions: exception types (and their subclasses) that propagate but count as
        neither success nor failure, like a 4xx from the upstream.
      sliding_window_size: if set, rate mode: judge the last N outcomes instead of counting
        consecutive failures (failure_threshold then does not apply).
      minimum_calls: outcomes the window must hold before any rate is judged (default: N).
      failure_rate_threshold: percent of failed calls in the window that opens the breaker.
      slow_call_duration: seconds above which a call counts as slow (rate mode only).
      slow_call_rate_threshold: percent of slow calls in the window that opens the breaker.
      clock: returns seconds; tests inject a fake one. Read the time only through it.
      name: for logs and listeners.
    """

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
        self.name = name
        self.failure_threshold = failure_threshold
        self.recovery_timeout = recovery_timeout
        self.half_open_max_calls = half_open_max_calls
        self.success_threshold = success_threshold
        self.excluded_exceptions = tuple(excluded_exceptions)
        self.sliding_window_size = sliding_window_size
        self.minimum_calls = minimum_calls
        self.failure_rate_threshold = failure_rate_threshold
        self.slow_call_duration = slow_call_duration
        self.slow_call_rate_threshold = slow_call_rate_threshold
        self._clock = clock
        # Guard every piece of mutable state with this lock: a node agent calls one breaker
        # from many threads. Never call the protected function or a listener while holding it.
        self._lock = threading.Lock()
        # TODO(step 1): add the state you need (current State, a failure count, ...).

    @property
    def state(self) -> State:
        """The current state; an open breaker whose timeout has passed reports HALF_OPEN."""
        # TODO(step 1): return the state. TODO(step 3): move OPEN -> HALF_OPEN when due.
        raise NotImplementedError("CircuitBreaker.state")

    def add_listener(self, listener: Listener) -> None:
        """Call `listener(breaker, old_state, new_state)` after every state transition."""
        # TODO(step 2)
        raise NotImplementedError("CircuitBreaker.add_listener")

    def acquire(self) -> Permit:
        """Admit one call and return its permit, or raise CircuitOpenError without calling.

        Closed: always admit. Open: raise CircuitOpenError(State.OPEN, seconds_left).
        Half-open: admit at most half_open_max_calls at a time, else
        raise CircuitOpenError(State.HALF_OPEN, 0.0).
        """
        # TODO(step 1): closed and open. TODO(step 3): half-open.
        raise NotImplementedError("CircuitBreaker.acquire")

    def record_success(self, permit: Permit, duration: float | None = None) -> None:
        """Report that the permitted call succeeded (`duration` defaults to time since acquire).

        Only a permit's first outcome counts; later ones are ignored.
        """
        # TODO(step 1)
        raise NotImplementedError("CircuitBreaker.record_success")

    def record_failure(self, permit: Permit, duration: float | None = None) -> None:
        """Report that the permitted call failed (`duration` defaults to time since acquire)."""
        # TODO(step 1)
        raise NotImplementedError("CircuitBreaker.record_failure")

    def release(self, permit: Permit) -> None:
        """Give the permit back without an outcome (excluded error, cancellation)."""
        # TODO(step 2)
        raise NotImplementedError("CircuitBreaker.release")

    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Call `fn(*args, **kwargs)` through the breaker and return its result.

        Raises CircuitOpenError without calling `fn` when not admitted; re-raises whatever
        `fn` raises, after counting it (excluded exceptions count as nothing).
        """
        # TODO(step 1): build it on acquire / record_success / record_failure.
        raise NotImplementedError("CircuitBreaker.call")

    async def call_async(
        self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Await `fn(*args, **kwargs)` through the breaker and return its result.

        Like `call`; a cancelled call (asyncio.CancelledError) counts as neither success nor
        failure, and gives its permit back.
        """
        # TODO(step 4)
        raise NotImplementedError("CircuitBreaker.call_async")

    def __call__(self, fn: Callable[P, T]) -> Callable[P, T]:
        """Decorate a sync or async function so every call goes through the breaker."""
        # TODO(step 4)
        raise NotImplementedError("CircuitBreaker.__call__ (the decorator)")
