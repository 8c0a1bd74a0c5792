"""Graded tests for exercise 01, the circuit breaker. Run: pytest exercises/01_circuit_breaker"""

from __future__ import annotations

import asyncio
import inspect

import pytest

from grader import learner

breaker = learner(__file__, "breaker")


class FakeClock:
    """A clock the test moves by hand, so timeouts pass at once and the same way every run."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


class UpstreamError(Exception):
    """What a failing upstream raises in these tests (think HTTP 503)."""


class BadRequest(Exception):
    """A caller's mistake (think HTTP 400): says nothing about the upstream's health."""


class NotFound(BadRequest):
    """A subclass of an excluded exception, which must be excluded too."""


def fail() -> None:
    raise UpstreamError("upstream answered 503")


def bad_request() -> None:
    raise NotFound("no such route")


def ok() -> str:
    return "ok"


def expect_state(cb, expected: str, why: str) -> None:
    """Assert that `cb.state` is `State.<expected>`, explaining `why` to the learner."""
    state = cb.state
    assert state is getattr(breaker.State, expected), (
        f"{why}: the breaker must be {expected}, it is {getattr(state, 'name', state)}"
    )


def fail_through(cb, times: int = 1) -> None:
    """Make `times` failing calls through `cb`; each must re-raise the upstream's own error."""
    for attempt in range(1, times + 1):
        try:
            cb.call(fail)
        except UpstreamError:
            continue
        except breaker.CircuitOpenError:
            raise AssertionError(
                f"failing call {attempt} of {times} was rejected with CircuitOpenError: "
                "the breaker opened earlier than it should have"
            ) from None
        raise AssertionError("call(fn) must re-raise the exception fn raised; it returned")


def trip(cb, clock: FakeClock, then_wait: float) -> None:
    """Open a breaker whose failure_threshold is 1, then let `then_wait` seconds pass."""
    fail_through(cb, 1)
    expect_state(cb, "OPEN", "one failure opens a breaker with failure_threshold=1")
    clock.advance(then_wait)


# ---------------------------------------------------------------------------------------------
# Step 1: trip after consecutive failures, then fail fast.


@pytest.mark.task(taskno=1)
def test_breaker_passes_calls_through_and_opens_after_consecutive_failures(clock):
    cb = breaker.CircuitBreaker(failure_threshold=3, clock=clock)
    assert cb.call(lambda x, y=0: x * 2 + y, 20, y=2) == 42, (
        "call(fn, *args, **kwargs) must call fn with those arguments and return its result"
    )
    expect_state(cb, "CLOSED", "a new breaker starts closed")
    for failures in (1, 2):
        fail_through(cb, 1)
        expect_state(cb, "CLOSED", f"{failures} of failure_threshold=3 failures is not enough")
    fail_through(cb, 1)
    expect_state(cb, "OPEN", "3 consecutive failures reach failure_threshold=3")


@pytest.mark.task(taskno=1)
def test_a_success_resets_the_consecutive_failure_count(clock):
    cb = breaker.CircuitBreaker(failure_threshold=3, clock=clock)
    fail_through(cb, 2)
    assert cb.call(ok) == "ok"
    fail_through(cb, 2)
    expect_state(cb, "CLOSED", "a success resets the run, so 2 failures, a success, 2 failures "
                 "do not reach failure_threshold=3")
    fail_through(cb, 1)
    expect_state(cb, "OPEN", "the third failure in a row reaches failure_threshold=3")


@pytest.mark.task(taskno=1)
def test_open_breaker_rejects_without_calling_the_function(clock):
    cb = breaker.CircuitBreaker(failure_threshold=2, recovery_timeout=30, clock=clock)
    fail_through(cb, 2)
    clock.advance(10)
    calls = []
    with pytest.raises(breaker.CircuitOpenError) as rejected:
        cb.call(lambda: calls.append("called"))
    assert calls == [], "an open breaker must reject without calling the function; it called it"
    assert rejected.value.remaining == pytest.approx(20), (
        "CircuitOpenError.remaining must be the seconds left until trial calls are allowed: "
        f"opened 10 s ago with recovery_timeout=30, so 20; it was {rejected.value.remaining!r}"
    )


# ---------------------------------------------------------------------------------------------
# Step 2: permits, excluded exceptions and listeners.


@pytest.mark.task(taskno=2)
def test_permits_count_outcomes_like_call_does(clock):
    cb = breaker.CircuitBreaker(failure_threshold=2, clock=clock)
    cb.record_failure(cb.acquire())
    cb.record_success(cb.acquire())
    cb.record_failure(cb.acquire())
    expect_state(cb, "CLOSED", "record_success resets the failure run as a successful call does")
    cb.record_failure(cb.acquire())
    expect_state(cb, "OPEN", "two record_failure calls in a row reach failure_threshold=2")
    with pytest.raises(breaker.CircuitOpenError):
        cb.acquire()


@pytest.mark.task(taskno=2)
def test_a_permit_counts_only_its_first_outcome(clock):
    cb = breaker.CircuitBreaker(failure_threshold=2, clock=clock)
    permit = cb.acquire()
    # A streaming proxy may report from its error path and again from its cleanup.
    cb.record_failure(permit)
    cb.record_failure(permit)
    cb.release(permit)
    expect_state(cb, "CLOSED", "a permit counts once, so recording its failure twice is one "
                 "failure of failure_threshold=2")


@pytest.mark.task(taskno=2)
def test_excluded_exceptions_propagate_without_counting_as_failures(clock):
    cb = breaker.CircuitBreaker(
        failure_threshold=2, excluded_exceptions=(BadRequest,), clock=clock
    )
    for _ in range(5):
        with pytest.raises(NotFound):
            cb.call(bad_request)
    expect_state(cb, "CLOSED", "excluded exceptions (and their subclasses) propagate but are "
                 "not failures; 5 of them were raised")


@pytest.mark.task(taskno=2)
def test_excluded_exceptions_do_not_reset_the_failure_count(clock):
    cb = breaker.CircuitBreaker(
        failure_threshold=2, excluded_exceptions=(BadRequest,), clock=clock
    )
    fail_through(cb, 1)
    with pytest.raises(NotFound):
        cb.call(bad_request)
    fail_through(cb, 1)
    expect_state(cb, "OPEN", "an excluded exception is neither failure nor success, so it does "
                 "not reset the run: failure, excluded, failure is 2 in a row")


@pytest.mark.task(taskno=2)
def test_listeners_hear_the_breaker_open(clock):
    cb = breaker.CircuitBreaker(failure_threshold=2, clock=clock)
    heard = []
    cb.add_listener(lambda b, old, new: heard.append((b, old, new)))
    cb.call(ok)
    fail_through(cb, 1)
    assert heard == [], f"listeners must hear only state changes; they heard {heard}"
    fail_through(cb, 1)
    with pytest.raises(breaker.CircuitOpenError):
        cb.call(ok)
    expected = [(cb, breaker.State.CLOSED, breaker.State.OPEN)]
    assert heard == expected, (
        "listeners must be called once per transition as listener(breaker, old_state, "
        f"new_state); expected {expected}, heard {heard}"
    )


# ---------------------------------------------------------------------------------------------
# Step 3: recovery through half-open trials.


@pytest.mark.task(taskno=3)
def test_open_breaker_turns_half_open_after_the_recovery_timeout(clock):
    cb = breaker.CircuitBreaker(failure_threshold=1, recovery_timeout=30, clock=clock)
    trip(cb, clock, then_wait=29.9)
    expect_state(cb, "OPEN", "29.9 s of a 30 s recovery_timeout have passed")
    with pytest.raises(breaker.CircuitOpenError):
        cb.acquire()
    clock.advance(0.1)
    expect_state(cb, "HALF_OPEN", "the 30 s recovery_timeout has passed")
    assert cb.call(ok) == "ok", "a half-open breaker must let a trial call through"


@pytest.mark.task(taskno=3, points=2)
def test_half_open_admits_at_most_k_concurrent_trials(clock):
    cb = breaker.CircuitBreaker(
        failure_threshold=1, recovery_timeout=5, half_open_max_calls=3, success_threshold=5,
        clock=clock,
    )
    trip(cb, clock, then_wait=5)
    trials = [cb.acquire() for _ in range(3)]  # three trials in flight, none finished
    calls = []
    with pytest.raises(breaker.CircuitOpenError):
        cb.call(lambda: calls.append("called"))
    assert calls == [], (
        "with half_open_max_calls=3 trials in flight, a 4th call must be rejected without "
        "calling the function; it was called"
    )
    cb.record_success(trials[0])
    trials.append(cb.acquire())  # a finished trial frees its slot
    with pytest.raises(breaker.CircuitOpenError):
        cb.acquire()
    cb.release(trials[1])
    trials.append(cb.acquire())  # so does a released one
    with pytest.raises(breaker.CircuitOpenError):
        cb.acquire()
    expect_state(cb, "HALF_OPEN", "1 trial success of success_threshold=5 does not close it")


@pytest.mark.task(taskno=3)
def test_m_trial_successes_close_the_breaker(clock):
    cb = breaker.CircuitBreaker(
        failure_threshold=2, recovery_timeout=5, half_open_max_calls=2, success_threshold=3,
        clock=clock,
    )
    fail_through(cb, 2)
    clock.advance(5)
    for done in (1, 2):
        assert cb.call(ok) == "ok"
        expect_state(cb, "HALF_OPEN", f"{done} of success_threshold=3 trial successes")
    cb.call(ok)
    expect_state(cb, "CLOSED", "3 trial successes reach success_threshold=3")
    fail_through(cb, 1)
    expect_state(cb, "CLOSED", "a breaker that closes counts failures from zero again, so one "
                 "failure after closing does not reach failure_threshold=2")


@pytest.mark.task(taskno=3, points=2)
def test_a_failed_trial_reopens_the_breaker_and_restarts_the_timer(clock):
    cb = breaker.CircuitBreaker(
        failure_threshold=1, recovery_timeout=30, half_open_max_calls=2, success_threshold=2,
        clock=clock,
    )
    trip(cb, clock, then_wait=30)
    first, second = cb.acquire(), cb.acquire()
    cb.record_success(first)
    cb.record_failure(second)
    expect_state(cb, "OPEN", "one failed trial reopens a half-open breaker")
    clock.advance(29)
    with pytest.raises(breaker.CircuitOpenError) as rejected:
        cb.call(ok)
    assert rejected.value.remaining == pytest.approx(1), (
        "reopening must restart the recovery timer: 29 s after the failed trial, 1 s should "
        f"remain; CircuitOpenError.remaining was {rejected.value.remaining!r}"
    )
    clock.advance(1)
    cb.call(ok)
    expect_state(cb, "HALF_OPEN", "trial successes from an earlier half-open phase do not "
                 "count, so one new success of success_threshold=2 does not close it")


@pytest.mark.task(taskno=3, points=2)
def test_outcomes_of_calls_admitted_before_a_transition_are_ignored(clock):
    cb = breaker.CircuitBreaker(
        failure_threshold=2, recovery_timeout=10, half_open_max_calls=1, success_threshold=1,
        clock=clock,
    )
    stream = cb.acquire()  # a long stream, admitted while the breaker was closed
    fail_through(cb, 2)
    clock.advance(10)
    trial = cb.acquire()
    cb.record_failure(stream)  # the old stream finally breaks, during the trial phase
    expect_state(cb, "HALF_OPEN", "a call admitted before the breaker opened must not judge "
                 "the trial phase, yet its late failure was counted")
    with pytest.raises(breaker.CircuitOpenError):
        cb.acquire()  # nor may it free the trial's slot
    cb.record_success(trial)
    expect_state(cb, "CLOSED", "the trial's success reaches success_threshold=1")


@pytest.mark.task(taskno=3)
def test_listeners_hear_the_whole_recovery_cycle(clock):
    cb = breaker.CircuitBreaker(failure_threshold=1, recovery_timeout=5, clock=clock)
    heard = []
    cb.add_listener(lambda b, old, new: heard.append((old.name, new.name)))
    trip(cb, clock, then_wait=5)
    fail_through(cb, 1)  # the trial fails
    clock.advance(5)
    cb.call(ok)  # the next trial succeeds
    expected = [
        ("CLOSED", "OPEN"), ("OPEN", "HALF_OPEN"), ("HALF_OPEN", "OPEN"),
        ("OPEN", "HALF_OPEN"), ("HALF_OPEN", "CLOSED"),
    ]
    assert heard == expected, (
        f"listeners must hear every transition, in order; expected {expected}, heard {heard}"
    )


# ---------------------------------------------------------------------------------------------
# Step 4: async callables and decorators.


async def settle_tasks() -> None:
    """Let every ready task run up to its next real wait."""
    for _ in range(5):
        await asyncio.sleep(0)


@pytest.mark.task(taskno=4)
async def test_call_async_awaits_the_function_and_trips_like_call(clock):
    cb = breaker.CircuitBreaker(failure_threshold=2, clock=clock)
    calls = []

    async def double(x: int) -> int:
        calls.append(x)
        await asyncio.sleep(0)
        return 2 * x

    async def failing() -> None:
        await asyncio.sleep(0)
        raise UpstreamError("upstream answered 503")

    assert await cb.call_async(double, 21) == 42, (
        "call_async(fn, *args) must await fn(*args) and return its result"
    )
    for _ in range(2):
        with pytest.raises(UpstreamError):
            await cb.call_async(failing)
    expect_state(cb, "OPEN", "two failed async calls reach failure_threshold=2")
    with pytest.raises(breaker.CircuitOpenError):
        await cb.call_async(double, 1)
    assert calls == [21], "an open breaker must reject async calls without calling them"


@pytest.mark.task(taskno=4, points=2)
async def test_concurrent_async_trials_are_limited_to_k(clock):
    cb = breaker.CircuitBreaker(
        failure_threshold=1, recovery_timeout=5, half_open_max_calls=2, success_threshold=2,
        clock=clock,
    )
    trip(cb, clock, then_wait=5)
    answer = asyncio.Event()
    started = []

    async def slow_upstream(n: int) -> str:
        started.append(n)
        await answer.wait()
        return f"ok {n}"

    async def quick_upstream(n: int) -> str:
        started.append(n)  # answers at once, so a wrongly admitted call cannot hang the test
        return f"ok {n}"

    trials = [asyncio.create_task(cb.call_async(slow_upstream, n)) for n in (1, 2)]
    try:
        await settle_tasks()  # both trials are now in flight, waiting for the upstream
        try:
            await cb.call_async(quick_upstream, 3)
        except breaker.CircuitOpenError:
            pass
    finally:
        answer.set()
        results = await asyncio.gather(*trials, return_exceptions=True)
    assert started == [1, 2], (
        "with half_open_max_calls=2 and two trials in flight, a third async call must be "
        "rejected with CircuitOpenError without calling the upstream; the upstream saw "
        f"calls {started}"
    )
    assert results == ["ok 1", "ok 2"], f"both trials must succeed; they gave {results}"
    expect_state(cb, "CLOSED", "2 trial successes reach success_threshold=2")


@pytest.mark.task(taskno=4)
async def test_a_cancelled_trial_frees_its_slot_without_judging_the_upstream(clock):
    cb = breaker.CircuitBreaker(
        failure_threshold=1, recovery_timeout=5, half_open_max_calls=1, clock=clock
    )
    trip(cb, clock, then_wait=5)
    never = asyncio.Event()

    async def hanging() -> None:
        await never.wait()

    async def answering() -> str:
        return "ok"

    trial = asyncio.create_task(cb.call_async(hanging))
    await settle_tasks()
    trial.cancel()
    with pytest.raises(asyncio.CancelledError):
        await trial
    expect_state(cb, "HALF_OPEN", "a cancelled call says nothing about the upstream (the "
                 "caller gave up), so it is neither success nor failure")
    assert await cb.call_async(answering) == "ok", (
        "a cancelled trial must give its half-open slot back; the next trial was rejected"
    )
    expect_state(cb, "CLOSED", "the next trial's success reaches success_threshold=1")


@pytest.mark.task(taskno=4)
async def test_breaker_works_as_a_decorator_on_sync_and_async_functions(clock):
    cb = breaker.CircuitBreaker(failure_threshold=1, clock=clock)

    @cb
    def add(a: int, b: int) -> int:
        return a + b

    @cb
    async def multiply(a: int, b: int) -> int:
        return a * b

    @cb
    def broken() -> None:
        fail()

    assert add(2, b=3) == 5, "a decorated sync function must return its result"
    assert await multiply(2, b=3) == 6, "a decorated async function must stay awaitable"
    assert (add.__name__, multiply.__name__) == ("add", "multiply"), (
        "the decorator should keep the function's name (functools.wraps)"
    )
    assert inspect.iscoroutinefunction(multiply), (
        "decorating an async function must give an async function"
    )
    with pytest.raises(UpstreamError):
        broken()
    with pytest.raises(breaker.CircuitOpenError):
        await multiply(2, 3)  # one breaker guards every function it decorates


# ---------------------------------------------------------------------------------------------
# Step 5: failure-rate mode over a sliding window.


@pytest.mark.task(taskno=5)
def test_rate_mode_waits_for_minimum_calls(clock):
    cb = breaker.CircuitBreaker(
        sliding_window_size=10, minimum_calls=10, failure_rate_threshold=50, clock=clock
    )
    fail_through(cb, 9)
    expect_state(cb, "CLOSED", "in rate mode no rate is judged before the window holds "
                 "minimum_calls=10 outcomes (and failure_threshold does not apply); it holds 9")
    fail_through(cb, 1)
    expect_state(cb, "OPEN", "10 failures of 10 calls is a 100% failure rate")


@pytest.mark.task(taskno=5, points=2)
def test_rate_mode_opens_on_the_failure_rate_of_the_last_n_calls(clock):
    cb = breaker.CircuitBreaker(
        sliding_window_size=4, minimum_calls=4, failure_rate_threshold=75, clock=clock
    )
    history = ""
    for outcome in "FFSSSFF":
        if outcome == "F":
            fail_through(cb, 1)
        else:
            cb.call(ok)
        history += outcome
        expect_state(cb, "CLOSED", f"after {history} the last 4 calls fail less than 75% of "
                     "the time")
    fail_through(cb, 1)
    expect_state(cb, "OPEN", "after FFSSSFFF the last 4 calls (SFFF) fail 75% of the time, "
                 "which reaches failure_rate_threshold=75 (only the last sliding_window_size "
                 "calls count, and reaching the threshold is enough)")


@pytest.mark.task(taskno=5, points=2)
def test_slow_calls_open_the_breaker_when_the_slow_call_rate_reaches_its_threshold(clock):
    cb = breaker.CircuitBreaker(
        sliding_window_size=4, minimum_calls=4, slow_call_duration=1.0,
        slow_call_rate_threshold=50, clock=clock,
    )

    def answer_after(seconds: float) -> str:
        clock.advance(seconds)  # the upstream takes this long, by the breaker's clock
        return "ok"

    for seconds in (0.1, 2.0, 0.1, 0.1):
        assert cb.call(answer_after, seconds) == "ok", "a slow success is still a success"
    expect_state(cb, "CLOSED", "1 slow call of 4 is 25%, under slow_call_rate_threshold=50")
    cb.call(answer_after, 2.0)
    expect_state(cb, "OPEN", "2 calls slower than slow_call_duration=1.0 among the last 4 is "
                 "50%, which reaches slow_call_rate_threshold=50")


@pytest.mark.task(taskno=5)
def test_record_success_uses_the_duration_it_is_given(clock):
    cb = breaker.CircuitBreaker(
        sliding_window_size=2, minimum_calls=2, slow_call_duration=1.0,
        slow_call_rate_threshold=100, clock=clock,
    )
    for _ in range(2):
        cb.record_success(cb.acquire(), 3.0)  # e.g. a proxy's own time-to-first-byte
    expect_state(cb, "OPEN", "record_success(permit, duration) judges slowness by the duration "
                 "given: two 3-second calls are over slow_call_duration=1.0")


@pytest.mark.task(taskno=5)
def test_excluded_exceptions_stay_out_of_the_window(clock):
    cb = breaker.CircuitBreaker(
        sliding_window_size=4, minimum_calls=4, failure_rate_threshold=50,
        excluded_exceptions=(BadRequest,), clock=clock,
    )
    cb.call(ok)
    fail_through(cb, 1)
    for _ in range(2):
        with pytest.raises(NotFound):
            cb.call(bad_request)
    fail_through(cb, 1)
    expect_state(cb, "CLOSED", "excluded exceptions never enter the window, so after success, "
                 "failure, 2 excluded, failure only 3 calls count, under minimum_calls=4")
    cb.call(ok)
    expect_state(cb, "OPEN", "success, failure, failure, success is a 50% failure rate over 4 "
                 "calls")


@pytest.mark.task(taskno=5)
def test_a_slow_trial_reopens_a_half_open_breaker(clock):
    cb = breaker.CircuitBreaker(
        sliding_window_size=2, minimum_calls=2, slow_call_duration=1.0, recovery_timeout=10,
        half_open_max_calls=1, success_threshold=1, clock=clock,
    )
    fail_through(cb, 2)
    clock.advance(10)
    cb.record_success(cb.acquire(), 3.0)
    expect_state(cb, "OPEN", "a trial exists to show the upstream is healthy again; one slower "
                 "than slow_call_duration shows it is not")
