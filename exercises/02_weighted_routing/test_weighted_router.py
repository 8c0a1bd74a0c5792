"""Graded tests for Exercise 02: weighted routing. Run `pytest exercises/02_weighted_routing`."""

import copy
import json
import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from grader import learner

weighted_router = learner(__file__, "weighted_router")

REPO_ROOT = Path(__file__).resolve().parents[2]

# What the DestinationRules of the mesh define: the subsets each host has.
SUBSETS = {"reviews": {"v1", "v2", "v3"}, "ratings": {"v1", "v2"}}


def reviews(subset):
    return {"host": "reviews", "subset": subset}


def ratings(subset):
    return {"host": "ratings", "subset": subset}


def bookinfo():
    """A VirtualService spec in the shape of Istio's bookinfo samples, as a fresh dict."""
    return copy.deepcopy(
        {
            "hosts": ["reviews"],
            "http": [
                {
                    "name": "jason",
                    "match": [{"headers": {"end-user": {"exact": "jason"}}}],
                    "route": [{"destination": reviews("v2")}],
                },
                {
                    "name": "reviews-canary",
                    "route": [
                        {"destination": reviews("v1"), "weight": 90},
                        {"destination": reviews("v3"), "weight": 10},
                    ],
                },
            ],
        }
    )


def dest(host, subset=None):
    return weighted_router.Destination(host, subset)


def split(**weights):
    """{Destination: weight} for subsets of reviews or ratings: split(reviews_v1=90, ...)."""
    return {dest(*name.split("_")): weight for name, weight in weights.items()}


def table_of(spec):
    return weighted_router.RouteTable.from_dict(spec, SUBSETS)


def first_difference(expected, got):
    return next((i for i, (a, b) in enumerate(zip(expected, got)) if a != b), None)


# ---------------------------------------------------------------------------------------------
# Step 1: parse and validate.


@pytest.mark.task(taskno=1)
def test_from_dict_reads_each_rules_weights():
    table = table_of(bookinfo())
    assert table.weights("reviews-canary") == split(reviews_v1=90, reviews_v3=10), (
        "weights('reviews-canary') should map each Destination(host, subset) to its weight"
    )
    assert table.weights(1) == table.weights("reviews-canary"), (
        "weights() should find a rule by its position in `http` as well as by its name"
    )


@pytest.mark.task(taskno=1)
def test_a_single_destination_without_weight_gets_100():
    table = table_of(bookinfo())
    assert table.weights("jason") == split(reviews_v2=100), (
        "a route with one destination and no weight sends it all traffic: Istio counts it as 100"
    )


@pytest.mark.task(taskno=1)
def test_from_json_builds_the_same_table_as_from_dict():
    table = weighted_router.RouteTable.from_json(json.dumps(bookinfo()), SUBSETS)
    assert table.weights("reviews-canary") == split(reviews_v1=90, reviews_v3=10), (
        "from_json(text, subsets) should parse the JSON and build the table as from_dict does"
    )
    with pytest.raises(weighted_router.RouteConfigError):
        weighted_router.RouteTable.from_json("{not json", SUBSETS)


@pytest.mark.task(taskno=1)
def test_weights_that_do_not_sum_to_100_name_the_rule_and_the_sum():
    spec = bookinfo()
    spec["http"][1]["route"][1]["weight"] = 0
    with pytest.raises(weighted_router.RouteConfigError) as caught:
        table_of(spec)
    expected = "http[1].route: weights sum to 90, expected 100"
    message = str(caught.value)
    assert message == expected, f"expected the message {expected!r}, got {message!r}"


DELETE = object()


def set_path(spec, path, value):
    """Set the node of `spec` at a path of keys and indexes; `value=DELETE` removes it."""
    *parents, last = path
    node = spec
    for key in parents:
        node = node[key]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value


# (what is wrong, where to change the spec, the new value, the field path the message must
# start with, words the message must contain)
INVALID_SPECS = [
    ("negative weight",
     ("http", 1, "route", 1, "weight"), -10,
     "http[1].route[1].weight", ["-10"]),
    ("unknown subset",
     ("http", 1, "route", 1, "destination", "subset"), "v4",
     "http[1].route[1].destination.subset", ["v4", "reviews"]),
    ("empty route list",
     ("http", 0, "route"), [],
     "http[0].route", []),
    ("unknown uri match kind",
     ("http", 0, "match", 0), {"uri": {"suffix": "/reviews"}},
     "http[0].match[0].uri", ["suffix"]),
    ("unknown header match kind",
     ("http", 0, "match", 0, "headers", "end-user"), {"contains": "jas"},
     "http[0].match[0].headers.end-user", ["contains"]),
    ("missing weight next to another destination",
     ("http", 1, "route", 1, "weight"), DELETE,
     "http[1].route[1].weight", []),
    ("same destination twice",
     ("http", 1, "route", 1, "destination"), reviews("v1"),
     "http[1].route[1].destination", []),
    ("no http rules",
     ("http",), [],
     "http", []),
]


@pytest.mark.task(taskno=1)
@pytest.mark.parametrize(
    "path, value, where, words",
    [case[1:] for case in INVALID_SPECS],
    ids=[case[0] for case in INVALID_SPECS],
)
def test_invalid_spec_is_rejected_with_the_path_of_the_bad_field(path, value, where, words):
    spec = bookinfo()
    set_path(spec, path, value)
    with pytest.raises(weighted_router.RouteConfigError) as caught:
        table_of(spec)
    message = str(caught.value)
    assert message.startswith(f"{where}: "), (
        f"the message should start with the field's path and a colon, {where!r}; got {message!r}"
    )
    for word in words:
        assert word in message, f"the message should mention {word!r}; got {message!r}"


# ---------------------------------------------------------------------------------------------
# Step 2: ordered first-match routing.


def routing_spec():
    testers_on_the_api = {
        "uri": {"prefix": "/api"},
        "headers": {"x-user": {"regex": "tester-[0-9]+"}},
    }
    return copy.deepcopy(
        {
            "hosts": ["reviews"],
            "http": [
                {
                    "name": "testers-on-the-api",
                    "match": [testers_on_the_api],
                    "route": [{"destination": reviews("v3")}],
                },
                {
                    "name": "health",
                    "match": [{"uri": {"exact": "/healthz"}}],
                    "route": [{"destination": {"host": "details"}}],
                },
                {
                    "name": "jason-or-beta",
                    "match": [
                        {"headers": {"x-user": {"exact": "jason"}}},
                        {"headers": {"x-channel": {"prefix": "beta"}}},
                    ],
                    "route": [{"destination": reviews("v2")}],
                },
                {
                    "name": "api",
                    "match": [{"uri": {"prefix": "/api"}}],
                    "route": [{"destination": ratings("v1")}],
                },
                {"name": "default", "route": [{"destination": reviews("v1")}]},
            ],
        }
    )


@pytest.mark.task(taskno=2, points=2)
def test_the_first_matching_rule_wins_in_order():
    table = table_of(routing_spec())
    got = table.route("/api/books", {"x-user": "tester-7"})
    assert got == dest("reviews", "v3"), (
        "/api/books from tester-7 matches rules 0 and 3; the first one (reviews/v3) must win, "
        f"got {got}"
    )
    catch_all_first = {
        "http": [
            {"route": [{"destination": reviews("v1")}]},
            {"match": [{"uri": {"prefix": "/api"}}], "route": [{"destination": reviews("v2")}]},
        ]
    }
    got = table_of(catch_all_first).route("/api")
    assert got == dest("reviews", "v1"), (
        f"a catch-all rule listed first shadows every later rule, as in Istio; got {got}"
    )


@pytest.mark.task(taskno=2)
def test_uri_exact_and_prefix_matches():
    table = table_of(routing_spec())
    cases = [
        ("/healthz", dest("details"), "exact /healthz"),
        ("/healthz?verbose=1", dest("details"), "exact match ignores the query string"),
        ("/healthz/deep", dest("reviews", "v1"), "exact /healthz must not match /healthz/deep"),
        ("/api", dest("ratings", "v1"), "prefix /api matches /api itself"),
        ("/apis/list", dest("ratings", "v1"), "prefix /api is a plain string prefix"),
        ("/ap", dest("reviews", "v1"), "prefix /api must not match /ap"),
    ]
    for path, expected, why in cases:
        got = table.route(path, {})
        assert got == expected, f"route({path!r}): {why}; expected {expected}, got {got}"


@pytest.mark.task(taskno=2, points=2)
def test_header_matches_exact_prefix_regex_with_case_insensitive_names():
    table = table_of(routing_spec())
    cases = [
        ({"x-user": "jason"}, dest("reviews", "v2"), "exact header value"),
        ({"X-User": "jason"}, dest("reviews", "v2"), "header names are case-insensitive"),
        ({"x-user": "Jason"}, dest("ratings", "v1"), "header values are case-sensitive"),
        ({"x-channel": "beta-2"}, dest("reviews", "v2"), "prefix header value"),
        ({"x-user": "tester-42"}, dest("reviews", "v3"), "regex header value"),
        ({"x-user": "tester-42x"}, dest("ratings", "v1"), "a regex must match the whole value"),
        ({"x-user": "my-tester-42"}, dest("ratings", "v1"), "a regex must match from the start"),
    ]
    for headers, expected, why in cases:
        got = table.route("/api/books", headers)
        assert got == expected, (
            f"route('/api/books', {headers}): {why}; expected {expected}, got {got}"
        )


@pytest.mark.task(taskno=2, points=2)
def test_conditions_of_one_match_entry_are_anded_and_entries_are_ored():
    table = table_of(routing_spec())
    got = table.route("/other", {"x-user": "tester-7"})
    assert got == dest("reviews", "v1"), (
        "rule 0 needs the /api prefix AND the tester header; /other with the header must fall "
        f"through to the default, got {got}"
    )
    for headers in ({"x-user": "jason"}, {"x-channel": "beta"}):
        got = table.route("/other", headers)
        assert got == dest("reviews", "v2"), (
            f"rule 2 lists two match entries and either one is enough (OR); {headers} should "
            f"give reviews/v2, got {got}"
        )


@pytest.mark.task(taskno=2)
def test_a_rule_without_match_matches_everything():
    table = table_of(routing_spec())
    got = table.route("/anything/at/all", {"x-whatever": "1"})
    assert got == dest("reviews", "v1"), (
        f"the last rule has no match, so it catches everything; got {got}"
    )


@pytest.mark.task(taskno=2)
def test_no_matching_rule_raises_no_route_error_naming_the_path():
    spec = routing_spec()
    del spec["http"][-1]  # no catch-all any more
    table = table_of(spec)
    with pytest.raises(weighted_router.NoRouteError) as caught:
        table.route("/nowhere", {})
    message = str(caught.value)
    assert "/nowhere" in message, f"the NoRouteError should name the path; got {message!r}"


# ---------------------------------------------------------------------------------------------
# Step 3: smooth weighted round-robin.


@pytest.mark.task(taskno=3, points=2)
def test_five_one_one_interleaves_like_nginx():
    balancer = weighted_router.SmoothWeightedRoundRobin([("a", 5), ("b", 1), ("c", 1)])
    picks = "".join(balancer.pick() for _ in range(14))
    assert picks == "aabacaa" * 2, (
        "weights a=5 b=1 c=1 should give nginx's sequence a a b a c a a, over and over; "
        f"got {' '.join(picks)}"
    )


@pytest.mark.task(taskno=3, points=2)
def test_every_window_of_total_weight_picks_has_the_exact_split():
    weights = {"a": 50, "b": 30, "c": 20}
    balancer = weighted_router.SmoothWeightedRoundRobin(list(weights.items()))
    picks = [balancer.pick() for _ in range(300)]
    for start in range(0, 201):
        window = Counter(picks[start:start + 100])
        assert window == Counter(weights), (
            f"picks {start}..{start + 99} should hold exactly {weights}, got {dict(window)}"
        )


@pytest.mark.task(taskno=3)
def test_route_table_splits_90_10_exactly_and_interleaved():
    table = table_of(bookinfo())
    picks = [table.route("/reviews/1", {}) for _ in range(200)]
    for start in (0, 37, 100):
        window = Counter(picks[start:start + 100])
        assert window == split(reviews_v1=90, reviews_v3=10), (
            "any 100 consecutive requests should split exactly 90/10; "
            f"picks {start}..{start + 99} gave {dict(window)}"
        )
    longest, run = 0, 0
    for pick in picks:
        run = run + 1 if pick == dest("reviews", "v1") else 0
        longest = max(longest, run)
    assert longest <= 9, (
        f"a smooth 90/10 split gives v3 one request in every 10; v1 got {longest} in a row"
    )


@pytest.mark.task(taskno=3)
def test_a_zero_weight_destination_is_never_picked():
    balancer = weighted_router.SmoothWeightedRoundRobin([("zero", 0), ("a", 1), ("b", 2)])
    picks = Counter(balancer.pick() for _ in range(30))
    assert picks["zero"] == 0, (
        f"an item of weight 0 must never be picked; it was picked {picks['zero']} times"
    )
    spec = bookinfo()
    spec["http"][1]["route"][0]["weight"] = 100
    spec["http"][1]["route"][1]["weight"] = 0
    table = table_of(spec)
    got = Counter(table.route("/", {}) for _ in range(200))
    assert got == split(reviews_v1=200), (
        f"weights 100/0 must send every request to v1, got {dict(got)}"
    )


# ---------------------------------------------------------------------------------------------
# Step 4: updates keep the state of unchanged rules.


def split_spec(ratings_split=(50, 50)):
    return copy.deepcopy(
        {
            "hosts": ["reviews", "ratings"],
            "http": [
                {
                    "name": "reviews-split",
                    "match": [{"uri": {"prefix": "/reviews"}}],
                    "route": [
                        {"destination": reviews("v1"), "weight": 60},
                        {"destination": reviews("v2"), "weight": 20},
                        {"destination": reviews("v3"), "weight": 20},
                    ],
                },
                {
                    "name": "ratings-split",
                    "match": [{"uri": {"prefix": "/ratings"}}],
                    "route": [
                        {"destination": ratings("v1"), "weight": ratings_split[0]},
                        {"destination": ratings("v2"), "weight": ratings_split[1]},
                    ],
                },
            ],
        }
    )


@pytest.mark.task(taskno=4, points=3)
def test_updating_one_rule_keeps_the_interleaving_of_the_others():
    control, updated = table_of(split_spec()), table_of(split_spec())
    expected = [control.route("/reviews", {}) for _ in range(100)]
    got = [updated.route("/reviews", {}) for _ in range(37)]
    updated.update(split_spec(ratings_split=(70, 30)))
    got += [updated.route("/reviews", {}) for _ in range(63)]
    at = first_difference(expected, got)
    assert at is None, (
        "only ratings-split changed, so reviews-split must carry on where it was; after "
        f"update() its picks differ from a never-updated table from pick {at} on "
        "(was its round-robin state reset?)"
    )


@pytest.mark.task(taskno=4)
def test_a_changed_rule_serves_its_new_split():
    table = table_of(split_spec())
    for _ in range(13):
        table.route("/ratings", {})
    table.update(split_spec(ratings_split=(70, 30)))
    got = Counter(table.route("/ratings", {}) for _ in range(100))
    assert got == split(ratings_v1=70, ratings_v2=30), (
        f"after the update, 100 requests to ratings-split should split exactly 70/30, "
        f"got {dict(got)}"
    )


@pytest.mark.task(taskno=4)
def test_rules_are_recognised_by_name_when_a_rule_is_inserted_before_them():
    control, updated = table_of(split_spec()), table_of(split_spec())
    expected = [control.route("/reviews", {}) for _ in range(50)]
    got = [updated.route("/reviews", {}) for _ in range(21)]
    spec = split_spec()
    new_rule = {
        "name": "new",
        "match": [{"uri": {"exact": "/new"}}],
        "route": [{"destination": reviews("v3")}],
    }
    spec["http"].insert(0, new_rule)
    updated.update(spec)
    got += [updated.route("/reviews", {}) for _ in range(29)]
    at = first_difference(expected, got)
    assert at is None, (
        "reviews-split moved from http[0] to http[1] but kept its name and split, so it is the "
        f"same rule and must keep its round-robin state; picks differ from pick {at} on"
    )


@pytest.mark.task(taskno=4, points=2)
def test_an_invalid_update_is_rejected_and_the_old_table_keeps_serving():
    control, updated = table_of(split_spec()), table_of(split_spec())
    expected = [control.route("/reviews", {}) for _ in range(40)]
    got = [updated.route("/reviews", {}) for _ in range(17)]
    with pytest.raises(weighted_router.RouteConfigError):
        updated.update(split_spec(ratings_split=(70, 20)))
    assert updated.weights("ratings-split") == split(ratings_v1=50, ratings_v2=50), (
        "a rejected update must leave every rule as it was"
    )
    got += [updated.route("/reviews", {}) for _ in range(23)]
    at = first_difference(expected, got)
    assert at is None, (
        f"a rejected update must not disturb the round-robin state; picks differ from pick {at} on"
    )


# ---------------------------------------------------------------------------------------------
# Step 5: consistent-hash stickiness.


def sticky_spec():
    return copy.deepcopy(
        {
            "hosts": ["reviews"],
            "http": [
                {
                    "name": "sticky",
                    "consistentHash": {"httpHeaderName": "x-user"},
                    "route": [
                        {"destination": reviews("v1"), "weight": 50},
                        {"destination": reviews("v2"), "weight": 30},
                        {"destination": reviews("v3"), "weight": 20},
                    ],
                }
            ],
        }
    )


@pytest.mark.task(taskno=5, points=2)
def test_the_same_header_value_always_gets_the_same_destination():
    table = table_of(sticky_spec())
    users = [f"user-{i}" for i in range(300)]
    first = {user: table.route("/", {"x-user": user}) for user in users}
    for header in ("x-user", "X-User"):
        for user in users:
            got = table.route("/", {header: user})
            assert got == first[user], (
                f"{user} went to {first[user]} first and to {got} later; a rule with "
                "consistentHash must send the same x-user value to the same destination"
            )
    assert len(set(first.values())) == 3, (
        f"300 users should spread over all three destinations, got {Counter(first.values())}"
    )


def ring_of(names, **options):
    return weighted_router.HashRing([(dest("reviews", name), 1) for name in names], **options)


@pytest.mark.task(taskno=5)
def test_the_ring_shares_keys_by_weight():
    ring = weighted_router.HashRing([("heavy", 3), ("light", 1)], vnodes_per_weight=100)
    share = Counter(ring.pick(f"key-{i}") for i in range(2000))["heavy"] / 2000
    assert 0.65 <= share <= 0.85, (
        f"with weights 3:1 the heavy item should own about 75% of the keys, it owns {share:.0%}; "
        "does each item get weight * vnodes_per_weight points on the ring?"
    )


@pytest.mark.task(taskno=5, points=3)
def test_adding_a_destination_moves_few_keys_and_only_to_the_new_one():
    before = ring_of(["v1", "v2", "v3"], vnodes_per_weight=100)
    # The newcomer is listed first, so points named after positions would all move.
    after = ring_of(["v4", "v1", "v2", "v3"], vnodes_per_weight=100)
    keys = [f"user-{i}" for i in range(1000)]
    moves = [(key, before.pick(key), after.pick(key)) for key in keys]
    moved = [(key, old, new) for key, old, new in moves if old != new]
    wrong = [f"{key}: {old} -> {new}" for key, old, new in moved if new != dest("reviews", "v4")]
    assert not wrong, (
        f"{len(wrong)} keys moved between old destinations, e.g. {wrong[0]}; adding v4 must only "
        "move keys to v4 (name ring points after the item, not its position)"
    )
    assert 100 <= len(moved) <= 350, (
        "adding a 4th equal destination should move about 25% of 1000 keys, at most 35%; "
        f"it moved {len(moved)}"
    )


@pytest.mark.task(taskno=5)
def test_a_zero_weight_destination_owns_no_part_of_the_ring():
    ring = weighted_router.HashRing([("zero", 0), ("a", 1), ("b", 1)], vnodes_per_weight=100)
    picks = Counter(ring.pick(f"key-{i}") for i in range(500))
    assert picks["zero"] == 0, (
        f"an item of weight 0 must own no points; it got {picks['zero']} keys"
    )


@pytest.mark.task(taskno=5, points=2)
def test_ring_placement_is_the_same_in_every_process():
    ring_of(["v1", "v2", "v3"]).pick("warm-up")  # fails here, with a clear message, if unfinished
    script = textwrap.dedent(
        f"""
        import importlib.util, json, sys
        spec = importlib.util.spec_from_file_location("graded", {weighted_router.__file__!r})
        module = importlib.util.module_from_spec(spec)
        sys.modules["graded"] = module
        spec.loader.exec_module(module)
        subsets = ("v1", "v2", "v3")
        ring = module.HashRing([(module.Destination("reviews", s), 1) for s in subsets])
        print(json.dumps([str(ring.pick(f"user-{{i}}")) for i in range(200)]))
        """
    )
    placements = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(REPO_ROOT)}
        done = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=30,
        )
        assert done.returncode == 0, (
            f"building a HashRing in a fresh process failed:\n{done.stderr[-800:]}"
        )
        placements.append(json.loads(done.stdout))
    moved = sum(a != b for a, b in zip(*placements))
    assert moved == 0, (
        f"{moved} of 200 keys landed elsewhere when only PYTHONHASHSEED changed: hash with "
        "hashlib, not Python's per-process salted hash(), or two sidecars will disagree"
    )


@pytest.mark.task(taskno=5)
def test_requests_without_the_hash_header_fall_back_to_the_weighted_round_robin():
    table = table_of(sticky_spec())
    got = Counter(table.route("/", {}) for _ in range(100))
    assert got == split(reviews_v1=50, reviews_v2=30, reviews_v3=20), (
        "without x-user there is nothing to stick to: 100 requests should split 50/30/20, "
        f"got {dict(got)}"
    )
