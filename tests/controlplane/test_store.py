"""The SQLite store: what survives a restart, WAL mode, versions and node reports."""

from __future__ import annotations

import asyncio
import json
import sqlite3

import pytest

from reference.controlplane.hub import ConfigHub
from reference.controlplane.store import (
    ConfigRepository,
    UnknownService,
    UnknownVersion,
)
from reference.proxy_config import parse_proxy_config

from .conftest import AUTH, make_config


async def test_configs_survive_a_restart_two_apps_on_one_file(make_client, db_path):
    first_repository = ConfigRepository(db_path)
    first = await make_client(hub=ConfigHub(first_repository, validator=parse_proxy_config))
    for subset in ("v1", "v2"):
        response = await first.put(
            "/v1/services/reviews/config", json=make_config(subset), headers=AUTH
        )
        assert response.status == 200
    await first.close()
    first_repository.close()

    second_repository = ConfigRepository(db_path)
    try:
        second = await make_client(hub=ConfigHub(second_repository, validator=parse_proxy_config))
        response = await second.get("/v1/services/reviews/config")
        assert response.headers["ETag"] == '"2"'
        assert (await response.json())["config"] == make_config("v2")
        # Numbering continues where the first process stopped: versions only move forward.
        response = await second.post(
            "/v1/services/reviews/rollback", json={"version": 1}, headers=AUTH
        )
        assert (await response.json())["version"] == 3
    finally:
        second_repository.close()


def test_node_reports_survive_a_restart(db_path):
    repository = ConfigRepository(db_path)
    repository.put("reviews", "{}")
    repository.record_ack("node-a", "reviews", 1, "n1", False, "bad")
    repository.close()
    repository = ConfigRepository(db_path)
    try:
        [report] = repository.acks("reviews")
        assert (report.node_id, report.accepted, report.error_detail) == ("node-a", False, "bad")
    finally:
        repository.close()


def test_the_database_uses_wal_and_full_sync(repository, db_path):
    assert repository._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert repository._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_a_database_from_a_newer_schema_is_refused(db_path):
    with sqlite3.connect(db_path) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(sqlite3.DatabaseError, match="schema version 99"):
        ConfigRepository(db_path)


def test_a_rollback_copies_the_old_body_and_remembers_what_it_copied(repository):
    repository.put("reviews", '{"a":1}')
    repository.put("reviews", '{"a":2}')
    stored = repository.rollback("reviews", 1)
    assert (stored.version, stored.config_json, stored.rollback_of) == (3, '{"a":1}', 1)
    assert [v.version for v in repository.versions("reviews")] == [3, 2, 1]


def test_unknown_services_and_versions_raise_distinct_errors(repository):
    with pytest.raises(UnknownService):
        repository.rollback("reviews", 1)
    repository.put("reviews", "{}")
    with pytest.raises(UnknownVersion):
        repository.rollback("reviews", 2)
    with pytest.raises(UnknownService):
        repository.versions("ratings")
    assert repository.latest("ratings") is None


def test_a_nack_keeps_the_applied_version_and_a_late_report_changes_nothing(repository):
    for body in ("{}", "{}", "{}"):
        repository.put("reviews", body)
    assert repository.record_ack("node-a", "reviews", 1, "n1", True)
    assert repository.record_ack("node-a", "reviews", 3, "n3", False, "bad")
    [report] = repository.acks("reviews")
    assert (report.version, report.accepted, report.applied_version) == (3, False, 1)
    # An ACK of version 2 arriving after the report on version 3 is old news.
    assert not repository.record_ack("node-a", "reviews", 2, "n2", True)
    assert repository.acks("reviews") == [report]
    # The node tries version 3 again and now applies it.
    assert repository.record_ack("node-a", "reviews", 3, "n4", True)
    [report] = repository.acks("reviews")
    assert (report.accepted, report.error_detail, report.applied_version) == (True, "", 3)


def test_a_report_on_a_version_that_was_never_stored_is_refused(repository):
    repository.put("reviews", "{}")
    with pytest.raises(UnknownVersion):
        repository.record_ack("node-a", "reviews", 2, "n", True)
    assert repository.acks("reviews") == []


async def test_concurrent_puts_each_get_a_version_of_their_own(hub):
    body = json.dumps(make_config())
    stored = await asyncio.gather(*(hub.put("reviews", body) for _ in range(20)))
    assert sorted(s.version for s in stored) == list(range(1, 21))
    assert (await hub.latest("reviews")).version == 20
