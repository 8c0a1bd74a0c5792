"""Graded tests for exercise 03: config sync. Run `pytest exercises/03_config_sync`."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import random
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from grader import learner

config_sync = learner(__file__, "config_sync")

SERVICE = "checkout"
WAIT = 0.05  # the long-poll wait the tests ask for: short, so a 304 comes back quickly
BASE, CAP = 0.01, 0.08  # backoff for the tests: the ceiling doubles 0.01 → 0.08 in 3 steps
SEED = 7


# ---------------------------------------------------------------------------------------------
# A fake control plane: GET /v1/services/{service}/config with ETag, If-None-Match and long-poll.


class ControlPlane:
    """Serves one config per service the way the real control plane does, on 127.0.0.1."""

    def __init__(self, aiohttp_server) -> None:
        self._make_server = aiohttp_server
        self.version = 1
        self.config: dict = {"timeout_ms": 250, "routes": [{"prefix": "/", "cluster": "v1"}]}
        self.failing = False  # answer 500 while True
        self.raw_body: bytes | None = None  # answer 200 with these bytes instead of the config
        self.send_etag = True
        self.requests: list[dict] = []
        self._changed = asyncio.Event()
        self._server = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def publish(self, version: int, config: dict) -> None:
        self.version, self.config = version, config
        self._changed.set()  # wake every long poll that is waiting
        self._changed = asyncio.Event()

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/v1/services/{service}/config", self._handle)
        # A restart reuses the port, so a client that knew the old address finds it again.
        self._server = await self._make_server(app, port=self.port)
        self.port = self._server.port

    async def stop(self) -> None:
        port = self.port
        await self._server.close()
        self.port = port

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append({
            "service": request.match_info["service"],
            "if_none_match": request.headers.get("If-None-Match"),
            "wait": request.query.get("wait"),
        })
        if self.failing:
            return web.Response(status=500, text="control plane overloaded")
        etag = f'"{self.version}"'
        if self.raw_body is not None:
            return web.Response(body=self.raw_body, headers={"ETag": etag})
        if request.headers.get("If-None-Match") == etag:
            changed = self._changed
            wait = min(float(request.query.get("wait", "0")), 1.0)
            try:
                await asyncio.wait_for(changed.wait(), wait)
            except asyncio.TimeoutError:
                return web.Response(status=304, headers={"ETag": etag})
            etag = f'"{self.version}"'
        headers = {"ETag": etag} if self.send_etag else {}
        return web.json_response({"version": self.version, "config": self.config}, headers=headers)


class RecordingSleep:
    """Stands in for asyncio.sleep: records each backoff delay and barely sleeps."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(0.001)


async def eventually(condition, what: str, timeout: float = 2.0) -> None:
    """Wait until `condition()` is true; fail with `what` if it never gets there."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            pytest.fail(what, pytrace=False)
        await asyncio.sleep(0.005)


def expected_delays(count: int) -> list[float]:
    """The full-jitter delays a Backoff(BASE, CAP, Random(SEED)) must draw, in order."""
    rng = random.Random(SEED)
    return [rng.uniform(0, min(CAP, BASE * 2**n)) for n in range(count)]


def cached_version(path: Path) -> int | None:
    """The version in a cache file, or None while it is missing or unreadable."""
    try:
        return json.loads(path.read_text())["version"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def plain(value):
    """Turn read-only mappings and tuples back into dicts and lists, for comparisons."""
    if hasattr(value, "items"):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


@pytest.fixture
async def control_plane(aiohttp_server) -> ControlPlane:
    plane = ControlPlane(aiohttp_server)
    await plane.start()
    return plane


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as client_session:
        yield client_session


@pytest.fixture
async def running():
    """Syncs a test started; stopped after the test even when it failed."""
    syncs: list = []
    yield syncs
    for sync in syncs:
        try:
            await asyncio.wait_for(sync.stop(), 2.0)
        except Exception:  # the test has already reported what went wrong
            pass


def new_sync(session, plane, store, **kwargs):
    kwargs.setdefault("wait", WAIT)
    return config_sync.ConfigSync(session, plane.url, SERVICE, store, **kwargs)


async def start(sync, syncs: list) -> None:
    await sync.start()
    syncs.append(sync)


# ---------------------------------------------------------------------------------------------
# Step 1: versions only move forward.


@pytest.mark.task(taskno=1)
async def test_an_empty_store_serves_nothing_until_the_first_offer():
    store = config_sync.ConfigStore()
    assert store.current is None, "a new store has no config yet; `current` should be None"
    result = await store.offer(1, {"timeout_ms": 250})
    assert result.status is config_sync.OfferStatus.APPLIED, (
        f"the first offer must be applied; offer() returned status {result.status}"
    )
    assert result.applied, "OfferResult.applied should be True for an applied offer"
    assert store.current is not None and store.current.version == 1, (
        "after applying version 1, `store.current.version` should be 1"
    )
    assert store.current.config["timeout_ms"] == 250, "the applied config should be served"
    assert store.version == 1, "`store.version` should be the served version"


@pytest.mark.task(taskno=1, points=2)
async def test_older_and_equal_versions_are_ignored():
    store = config_sync.ConfigStore()
    await store.offer(3, {"timeout_ms": 300})
    for version in (2, 3):
        result = await store.offer(version, {"timeout_ms": 999})
        assert result.status is config_sync.OfferStatus.STALE, (
            f"offering version {version} while 3 is served must be ignored as STALE; "
            f"got {result.status}"
        )
        assert not result.applied, "a stale offer is not applied"
        assert result.current is not None and result.current.version == 3, (
            "OfferResult.current should be the snapshot still served (version 3)"
        )
    assert store.version == 3 and store.current.config["timeout_ms"] == 300, (
        "older and equal versions must not replace the served config"
    )


@pytest.mark.task(taskno=1)
async def test_newer_versions_replace_the_config():
    store = config_sync.ConfigStore()
    for version in (1, 2, 7):
        result = await store.offer(version, {"timeout_ms": version * 100})
        assert result.applied, f"version {version} is newer than the served one; apply it"
        assert store.version == version, f"store.version should be {version} after applying it"
        assert store.current.config["timeout_ms"] == version * 100


# ---------------------------------------------------------------------------------------------
# Step 2: validate before applying; reject with the reason; keep the last good config.


def no_negative_timeouts(config) -> None:
    if config.get("timeout_ms", 0) < 0:
        raise config_sync.InvalidConfig("timeout_ms must not be negative")


@pytest.mark.task(taskno=2, points=2)
async def test_an_invalid_config_is_rejected_with_its_reason_and_the_last_good_one_serves():
    store = config_sync.ConfigStore(validator=no_negative_timeouts)
    await store.offer(1, {"timeout_ms": 250})
    result = await store.offer(2, {"timeout_ms": -1})
    assert result.status is config_sync.OfferStatus.REJECTED, (
        f"a config the validator refuses must be REJECTED; got {result.status}"
    )
    assert result.reason == "timeout_ms must not be negative", (
        f"OfferResult.reason should carry the validator's message; got {result.reason!r}"
    )
    assert store.version == 1 and store.current.config["timeout_ms"] == 250, (
        "after a rejection the last good config (version 1) must keep serving"
    )
    assert result.current is not None and result.current.version == 1, (
        "OfferResult.current should be the snapshot still served after the rejection"
    )


@pytest.mark.task(taskno=2)
async def test_a_newer_valid_config_applies_after_a_rejection():
    store = config_sync.ConfigStore(validator=no_negative_timeouts)
    await store.offer(1, {"timeout_ms": 250})
    await store.offer(2, {"timeout_ms": -1})
    result = await store.offer(3, {"timeout_ms": 400})
    assert result.applied and store.version == 3, (
        "a rejected version must not block the next valid one; version 3 should apply"
    )


@pytest.mark.task(taskno=2)
async def test_the_validator_runs_before_the_config_is_served():
    seen = []
    store = config_sync.ConfigStore(
        validator=lambda config: seen.append((plain(config), store.version))
    )
    await store.offer(1, {"timeout_ms": 250})
    await store.offer(2, {"timeout_ms": 500})
    assert seen == [({"timeout_ms": 250}, None), ({"timeout_ms": 500}, 1)], (
        "the validator must get each new config while the old one still serves; "
        f"it saw (config, served version) = {seen}"
    )


@pytest.mark.task(taskno=2)
async def test_stale_offers_are_not_validated():
    calls = []
    store = config_sync.ConfigStore(validator=calls.append)
    await store.offer(5, {"timeout_ms": 250})
    await store.offer(4, {"timeout_ms": 250})
    await store.offer(5, {"timeout_ms": 250})
    assert len(calls) == 1, (
        f"only newer versions need validating; the validator ran {len(calls)} times for one "
        "new version and two stale ones. Check the version before validating."
    )


@pytest.mark.task(taskno=2)
async def test_a_crashing_validator_rejects_the_config_instead_of_raising():
    def buggy(config):
        return config["missing"]  # KeyError: a bug in the validator, not in the config

    store = config_sync.ConfigStore(validator=buggy)
    result = await store.offer(1, {"timeout_ms": 250})
    assert result.status is config_sync.OfferStatus.REJECTED, (
        "any exception from the validator must reject the config, not escape offer()"
    )
    assert result.reason, "a rejection always needs a reason, even for a KeyError"
    assert store.current is None, "a rejected first config leaves the store empty"


# ---------------------------------------------------------------------------------------------
# Step 3: immutable snapshots and one notification per applied version.


@pytest.mark.task(taskno=3, points=2)
async def test_the_served_config_is_a_read_only_deep_copy():
    original = {"timeout_ms": 250, "routes": [{"prefix": "/", "cluster": "v1"}]}
    expected = json.loads(json.dumps(original))
    store = config_sync.ConfigStore()
    await store.offer(1, original)
    original["timeout_ms"] = 1
    original["routes"][0]["cluster"] = "hijacked"
    snapshot = store.current
    assert plain(snapshot.config) == expected, (
        "changing the caller's dict after offer() changed the served config; copy it deeply"
    )
    with pytest.raises(TypeError):
        snapshot.config["timeout_ms"] = 1  # a reader must not change the config for everyone
    with pytest.raises(TypeError):
        snapshot.config["routes"][0]["cluster"] = "hijacked"  # nested mappings too
    with pytest.raises((TypeError, AttributeError)):
        snapshot.config["routes"].append({"prefix": "/x"})  # and lists (make them tuples)
    with pytest.raises(dataclasses.FrozenInstanceError):
        snapshot.version = 99  # Snapshot should be a frozen dataclass


@pytest.mark.task(taskno=3, points=2)
async def test_subscribers_hear_each_applied_version_exactly_once():
    heard_sync, heard_async = [], []

    async def async_subscriber(snapshot):
        await asyncio.sleep(0)
        heard_async.append(snapshot.version)

    store = config_sync.ConfigStore(validator=no_negative_timeouts)
    store.subscribe(lambda snapshot: heard_sync.append(snapshot.version))
    store.subscribe(async_subscriber)
    await store.offer(1, {"timeout_ms": 250})
    await store.offer(1, {"timeout_ms": 250})  # equal: stale
    await store.offer(0, {"timeout_ms": 250})  # older: stale
    await store.offer(2, {"timeout_ms": -5})  # rejected
    await store.offer(3, {"timeout_ms": 300})
    assert heard_sync == [1, 3], (
        f"a plain subscriber should hear versions [1, 3] (never stale or rejected ones); "
        f"it heard {heard_sync}"
    )
    assert heard_async == [1, 3], (
        f"an async subscriber must be awaited once per applied version; it heard {heard_async}"
    )


@pytest.mark.task(taskno=3)
async def test_a_subscriber_finds_the_new_snapshot_already_served():
    store = config_sync.ConfigStore()
    seen = []
    store.subscribe(lambda snapshot: seen.append((snapshot, store.current)))
    await store.offer(1, {"timeout_ms": 250})
    (given, served), = seen
    assert given is served, (
        "swap the snapshot in before notifying, so a subscriber reading the store sees the "
        "same snapshot it was given"
    )


@pytest.mark.task(taskno=3)
async def test_a_failing_subscriber_does_not_stop_the_others_or_the_update():
    store = config_sync.ConfigStore()
    heard = []

    def broken(snapshot):
        raise RuntimeError("subscriber bug")

    store.subscribe(broken)
    store.subscribe(lambda snapshot: heard.append(snapshot.version))
    result = await store.offer(1, {"timeout_ms": 250})
    assert result.applied and store.version == 1, "a broken subscriber must not undo the update"
    assert heard == [1], "the other subscribers must still be notified when one raises"


@pytest.mark.task(taskno=3)
async def test_unsubscribe_stops_notifications():
    store = config_sync.ConfigStore()
    heard = []
    unsubscribe = store.subscribe(lambda snapshot: heard.append(snapshot.version))
    await store.offer(1, {})
    unsubscribe()
    await store.offer(2, {})
    assert heard == [1], f"after unsubscribe() nothing more should arrive; heard {heard}"


# ---------------------------------------------------------------------------------------------
# Step 4: the sync loop's single poll: ETag, If-None-Match, 304 and long-poll.


@pytest.mark.task(taskno=4, points=2)
async def test_the_first_poll_fetches_the_config_unconditionally(control_plane, session):
    store = config_sync.ConfigStore()
    sync = new_sync(session, control_plane, store)
    result = await sync.poll_once()
    assert result is not None and result.applied, (
        "the first poll should get a 200 and apply its config; poll_once() returned "
        f"{result!r}"
    )
    assert store.version == 1 and plain(store.current.config) == control_plane.config
    (request,) = control_plane.requests
    assert request["service"] == SERVICE, (
        f"GET {{base_url}}/v1/services/{SERVICE}/config; the server saw service "
        f"{request['service']!r}"
    )
    assert request["if_none_match"] is None, (
        "the first request has no ETag to send; do not send If-None-Match"
    )
    assert request["wait"] is not None and float(request["wait"]) == WAIT, (
        f"send the long-poll wait as ?wait={WAIT}; the server got wait={request['wait']!r}"
    )


@pytest.mark.task(taskno=4, points=2)
async def test_the_next_poll_sends_the_etag_and_a_304_changes_nothing(control_plane, session):
    store = config_sync.ConfigStore()
    heard = []
    store.subscribe(lambda snapshot: heard.append(snapshot.version))
    sync = new_sync(session, control_plane, store)
    await sync.poll_once()
    result = await sync.poll_once()
    assert control_plane.requests[1]["if_none_match"] == '"1"', (
        "the second request must carry If-None-Match with the ETag of the first answer "
        f"('\"1\"'); it sent {control_plane.requests[1]['if_none_match']!r}"
    )
    assert result is None, f"poll_once() should return None for a 304; it returned {result!r}"
    assert heard == [1] and store.version == 1, "a 304 must not notify anyone or change anything"


@pytest.mark.task(taskno=4, points=2)
async def test_a_long_poll_returns_as_soon_as_the_control_plane_publishes(control_plane, session):
    store = config_sync.ConfigStore()
    sync = new_sync(session, control_plane, store, wait=5.0)  # the server caps it at 1 s
    await sync.poll_once()
    poll = asyncio.create_task(sync.poll_once())
    await asyncio.sleep(0.02)
    assert not poll.done(), (
        "with nothing new, the server holds the request for `wait` seconds; the poll ended early"
    )
    control_plane.publish(2, {"timeout_ms": 500})
    try:
        result = await asyncio.wait_for(poll, 0.5)
    finally:
        poll.cancel()
    assert result is not None and result.applied and store.version == 2, (
        "the held poll should return version 2 as soon as it is published"
    )


@pytest.mark.task(taskno=4)
async def test_a_stale_answer_is_ignored_but_its_etag_is_remembered(control_plane, session):
    store = config_sync.ConfigStore()
    await store.offer(5, {"timeout_ms": 250})  # e.g. loaded from the cache; the server is behind
    sync = new_sync(session, control_plane, store)
    result = await sync.poll_once()
    assert result is not None and result.status is config_sync.OfferStatus.STALE, (
        "version 1 from the server while 5 is served should come back STALE"
    )
    await sync.poll_once()
    assert control_plane.requests[1]["if_none_match"] == '"1"', (
        "remember the ETag even when the offer was stale or rejected; otherwise every poll "
        "fetches the same version again at once, a tight loop"
    )


OUTAGES = ["status 500", "invalid JSON", "version missing", "no ETag", "server down"]


async def break_control_plane(plane: ControlPlane, outage: str) -> None:
    if outage == "status 500":
        plane.failing = True
    elif outage == "invalid JSON":
        plane.raw_body = b'{"version": 2, "config": {'
    elif outage == "version missing":
        plane.raw_body = json.dumps({"config": {"timeout_ms": 1}}).encode()
    elif outage == "no ETag":
        plane.send_etag = False
    elif outage == "server down":
        await plane.stop()


async def mend_control_plane(plane: ControlPlane, outage: str) -> None:
    plane.failing, plane.raw_body, plane.send_etag = False, None, True
    if outage == "server down":
        await plane.start()


@pytest.mark.task(taskno=4)
@pytest.mark.parametrize("outage", OUTAGES)
async def test_a_failed_poll_raises_sync_error_and_changes_nothing(control_plane, session, outage):
    store = config_sync.ConfigStore()
    await store.offer(1, {"timeout_ms": 250})
    sync = new_sync(session, control_plane, store)
    await break_control_plane(control_plane, outage)
    with pytest.raises(config_sync.SyncError):
        await sync.poll_once()
    assert store.version == 1, f"a failed poll ({outage}) must leave the served config alone"


# ---------------------------------------------------------------------------------------------
# Step 5: backoff with full jitter and a cap while errors last; reset and recover afterwards.


@pytest.mark.task(taskno=5, points=2)
def test_backoff_draws_full_jitter_from_the_injected_rng():
    backoff = config_sync.Backoff(base=BASE, cap=CAP, rng=random.Random(SEED))
    delays = [backoff.next_delay() for _ in range(8)]
    assert delays == pytest.approx(expected_delays(8)), (
        "delay n must be rng.uniform(0, min(cap, base * 2**n)), n counting from 0 "
        f"(AWS full jitter); expected {expected_delays(8)}, got {delays}"
    )


@pytest.mark.task(taskno=5)
def test_backoff_never_exceeds_the_cap_however_long_the_outage():
    backoff = config_sync.Backoff(base=BASE, cap=CAP, rng=random.Random(SEED))
    for n in range(2000):  # 2**2000 would overflow a float if the exponent kept growing
        delay = backoff.next_delay()
        assert 0 <= delay <= min(CAP, BASE * 2 ** min(n, 10)), (
            f"delay {n} was {delay}; it must lie in [0, min(cap, base * 2**n)]"
        )


@pytest.mark.task(taskno=5)
def test_backoff_reset_starts_again_from_the_base():
    backoff = config_sync.Backoff(base=BASE, cap=CAP, rng=random.Random(SEED))
    for _ in range(5):
        backoff.next_delay()
    backoff.reset()
    rng = random.Random(SEED)
    for n in range(5):
        rng.uniform(0, min(CAP, BASE * 2**n))
    assert backoff.next_delay() == pytest.approx(rng.uniform(0, BASE)), (
        "after reset() the next delay is drawn from [0, base] again"
    )


@pytest.mark.task(taskno=5, points=2)
@pytest.mark.parametrize("outage", ["status 500", "invalid JSON", "server down"])
async def test_the_loop_backs_off_during_an_outage_and_recovers(
    control_plane, session, running, outage
):
    store = config_sync.ConfigStore()
    sleep = RecordingSleep()
    backoff = config_sync.Backoff(base=BASE, cap=CAP, rng=random.Random(SEED))
    sync = new_sync(session, control_plane, store, backoff=backoff, sleep=sleep)
    await break_control_plane(control_plane, outage)
    await start(sync, running)
    await eventually(
        lambda: len(sleep.delays) >= 6,
        f"while the control plane fails ({outage}) the loop must retry, calling the injected "
        f"sleep with a backoff delay each time; it slept {len(sleep.delays)} times",
    )
    assert sleep.delays[:6] == pytest.approx(expected_delays(6)), (
        "the loop's delays should come from its Backoff: full jitter, growing ceiling, "
        f"capped; expected {expected_delays(6)}, got {sleep.delays[:6]}"
    )
    assert isinstance(sync.last_error, config_sync.SyncError), (
        "while polls fail, `last_error` should hold the SyncError of the last failure"
    )
    control_plane.publish(2, {"timeout_ms": 500})
    await mend_control_plane(control_plane, outage)
    await eventually(
        lambda: store.version == 2,
        "once the control plane is back the loop must fetch version 2; it never did",
    )
    await eventually(lambda: sync.last_error is None, "a successful poll should clear last_error")


@pytest.mark.task(taskno=5, points=2)
async def test_a_success_resets_the_backoff(control_plane, session, running):
    store = config_sync.ConfigStore()
    sleep = RecordingSleep()
    backoff = config_sync.Backoff(base=BASE, cap=CAP, rng=random.Random(SEED))
    sync = new_sync(session, control_plane, store, backoff=backoff, sleep=sleep)
    control_plane.failing = True
    await start(sync, running)
    await eventually(lambda: len(sleep.delays) >= 5, "the loop never backed off on status 500")
    control_plane.failing = False
    await eventually(lambda: store.version == 1, "the loop never recovered after the 500s")
    failures = len(sleep.delays)
    control_plane.failing = True
    await eventually(lambda: len(sleep.delays) > failures, "the loop never backed off again")
    rng = random.Random(SEED)
    for n in range(failures):
        rng.uniform(0, min(CAP, BASE * 2**n))
    assert sleep.delays[failures] == pytest.approx(rng.uniform(0, BASE)), (
        "after a successful poll the backoff must reset: the first delay of the next outage "
        f"is drawn from [0, base={BASE}] again; got {sleep.delays[failures]}"
    )


# ---------------------------------------------------------------------------------------------
# Step 6: atomic persistence and an offline start.


@pytest.mark.task(taskno=6)
def test_save_cache_round_trips_through_load_cache(tmp_path):
    path = tmp_path / "checkout.json"
    config = {"timeout_ms": 250, "routes": [{"prefix": "/", "cluster": "v1"}]}
    config_sync.save_cache(path, config_sync.Snapshot(4, config))
    loaded = config_sync.load_cache(path)
    assert loaded is not None and loaded.version == 4, "load_cache should return version 4"
    assert plain(loaded.config) == config, f"the config should survive the round trip: {loaded}"
    assert json.loads(path.read_text()) == {"version": 4, "config": config}, (
        'the cache file should hold the wire format: {"version": ..., "config": {...}}'
    )


@pytest.mark.task(taskno=6)
def test_load_cache_returns_none_when_there_is_no_cache_yet(tmp_path):
    assert config_sync.load_cache(tmp_path / "absent.json") is None, (
        "a missing cache file is normal on a first start; return None"
    )


@pytest.mark.task(taskno=6)
@pytest.mark.parametrize(
    "content",
    [
        b"",
        b'{"version": 3, "conf',
        b"\xff\xfe garbage",
        b"[1, 2]",
        b'{"version": "3", "config": {}}',
    ],
    ids=["empty", "truncated", "binary", "not an object", "version not an int"],
)
def test_load_cache_raises_corrupt_cache_for_a_damaged_file(tmp_path, content):
    path = tmp_path / "checkout.json"
    path.write_bytes(content)
    with pytest.raises(config_sync.CorruptCache):
        config_sync.load_cache(path)


@pytest.mark.task(taskno=6, points=2)
def test_save_cache_writes_a_temp_file_fsyncs_it_and_replaces_the_target(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append("fsync")
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", Path(src), Path(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    path = tmp_path / "checkout.json"
    config_sync.save_cache(path, config_sync.Snapshot(1, {"timeout_ms": 250}))
    replaces = [e for e in events if isinstance(e, tuple)]
    assert len(replaces) == 1, "write a temp file, then move it over the target with os.replace"
    _, source, target = replaces[0]
    assert target == path and source != path, "os.replace(temp, target): never write in place"
    assert source.parent == path.parent, (
        "the temp file must be in the target's folder: a rename is only atomic within one "
        f"file system; it was in {source.parent}"
    )
    assert "fsync" in events[: events.index(replaces[0])], (
        "flush and os.fsync the temp file before os.replace, or a crash can leave an empty "
        "file under the final name"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkout.json"], (
        "no temp file should be left behind"
    )


@pytest.mark.task(taskno=6, points=2)
def test_a_failed_save_keeps_the_old_cache_and_leaves_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "checkout.json"
    config_sync.save_cache(path, config_sync.Snapshot(1, {"timeout_ms": 250}))

    def full_disk(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError):
        config_sync.save_cache(path, config_sync.Snapshot(2, {"timeout_ms": 500}))
    assert cached_version(path) == 1, "a failed save must not touch the old cache"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkout.json"], (
        "clean up the temp file when the save fails"
    )


@pytest.mark.task(taskno=6, points=2)
async def test_applied_configs_are_persisted_and_rejected_ones_are_not(
    control_plane, session, tmp_path
):
    path = tmp_path / "checkout.json"
    store = config_sync.ConfigStore(validator=no_negative_timeouts)
    sync = new_sync(session, control_plane, store, cache_path=path)
    await sync.poll_once()
    cached = config_sync.load_cache(path)
    assert cached is not None and cached.version == 1, (
        "after applying a config from the control plane, persist it to cache_path"
    )
    marker = '{"version": 1, "config": {"written": "by the test"}}'
    path.write_text(marker)  # any rewrite of the cache from now on would replace this
    control_plane.publish(2, {"timeout_ms": -1})
    result = await sync.poll_once()
    assert result.status is config_sync.OfferStatus.REJECTED
    assert path.read_text() == marker, (
        "only applied configs go to the cache; a rejected (or stale) one must not rewrite it"
    )


@pytest.mark.task(taskno=6, points=2)
async def test_an_offline_start_serves_the_cached_config_then_catches_up(
    control_plane, session, running, tmp_path
):
    path = tmp_path / "checkout.json"
    config_sync.save_cache(path, config_sync.Snapshot(4, {"timeout_ms": 400}))
    await control_plane.stop()
    store = config_sync.ConfigStore()
    sleep = RecordingSleep()
    backoff = config_sync.Backoff(base=BASE, cap=CAP, rng=random.Random(SEED))
    sync = new_sync(session, control_plane, store, cache_path=path, sleep=sleep, backoff=backoff)
    await start(sync, running)
    assert store.version == 4, (
        "start() must load the cache before it returns, so the agent serves version 4 while "
        f"the control plane is unreachable; the store serves {store.version}"
    )
    await eventually(
        lambda: len(sleep.delays) >= 2, "with the control plane down the loop should back off"
    )
    control_plane.publish(5, {"timeout_ms": 500})
    await control_plane.start()
    await eventually(
        lambda: store.version == 5, "the loop should fetch version 5 once the server is back"
    )
    await eventually(
        lambda: cached_version(path) == 5, "version 5 should replace version 4 in the cache"
    )


@pytest.mark.task(taskno=6, points=2)
async def test_a_corrupt_cache_is_reported_and_ignored_at_start(
    control_plane, session, running, tmp_path, caplog
):
    path = tmp_path / "checkout.json"
    path.write_bytes(b'{"version": 3, "conf')
    store = config_sync.ConfigStore()
    sync = new_sync(session, control_plane, store, cache_path=path)
    with caplog.at_level(logging.WARNING):
        await start(sync, running)  # must not raise
    assert any(
        record.levelno >= logging.WARNING and "checkout.json" in record.getMessage()
        for record in caplog.records
    ), "log a warning that names the corrupt cache file, so an operator can find it"
    await eventually(
        lambda: store.version == 1, "after ignoring the corrupt cache, the loop should still sync"
    )
    await eventually(
        lambda: cached_version(path) == 1,
        "the corrupt cache should be replaced by the next applied config",
    )
