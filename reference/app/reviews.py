"""The sample `reviews` service in three versions, after Istio's bookinfo example."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

from aiohttp import web

__all__ = ["FAILURES", "VERSIONS", "FailureSwitch", "create_app"]

# v1 shows reviews only; v2 adds a star rating drawn in black, v3 the same rating in red, so a
# reader of the response (or of a weighted-routing demo) can tell the versions apart at once.
STAR_COLOR = {"v1": None, "v2": "black", "v3": "red"}
VERSIONS = tuple(STAR_COLOR)

# The requests this app takes are tiny; a small cap keeps a bad client from filling memory.
MAX_BODY_BYTES = 4096


@dataclass(frozen=True)
class Review:
    """One reader's review of a product."""

    reviewer: str
    text: str
    stars: int


# Bookinfo serves the same reviews for every product id; so does this app.
REVIEWS = (
    Review("Mara", "Read it in one sitting and missed my stop twice. Worth it.", 5),
    Review("Tomasz", "Clever plot, but the middle chapters drag.", 3),
)


class FailureSwitch:
    """How often `/reviews` answers 503, for circuit-breaker demos; change it at run time."""

    def __init__(self, fail_rate: float = 0.0, rng: random.Random | None = None) -> None:
        self.fail_rate = check_fail_rate(fail_rate)
        # A seeded Random makes the sequence of failures repeatable in tests and demos.
        self._rng = rng if rng is not None else random.Random()

    def should_fail(self) -> bool:
        """Draw once: True with probability `fail_rate`."""
        # Always draw, even at rate 0 or 1, so a seeded run stays in step after a change.
        return self._rng.random() < self.fail_rate


def check_fail_rate(value: object) -> float:
    """Return `value` as a rate in [0, 1], or raise ValueError."""
    # bool is an int subclass: `true` in a JSON body must not mean "fail every request".
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"fail_rate must be a number, got {value!r}")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"fail_rate must be between 0 and 1, got {value!r}")
    return float(value)


VERSION = web.AppKey("version", str)
LATENCY = web.AppKey("latency", float)
FAILURES = web.AppKey("failures", FailureSwitch)


def review_json(review: Review, color: str | None) -> dict[str, object]:
    """The JSON shape of one review; the rating appears only in versions that have one."""
    body: dict[str, object] = {"reviewer": review.reviewer, "text": review.text}
    if color is not None:
        body["rating"] = {"stars": review.stars, "color": color}
    return body


async def get_reviews(request: web.Request) -> web.Response:
    """`GET /reviews/{id}`: the reviews of one product, shaped by this app's version."""
    app = request.app
    if app[LATENCY] > 0:
        await asyncio.sleep(app[LATENCY])
    if app[FAILURES].should_fail():
        return web.json_response(
            {"error": "injected failure", "version": app[VERSION]}, status=503
        )
    color = STAR_COLOR[app[VERSION]]
    return web.json_response(
        {
            "id": int(request.match_info["id"]),
            "version": app[VERSION],
            "reviews": [review_json(review, color) for review in REVIEWS],
        }
    )


async def set_fail_rate(request: web.Request) -> web.Response:
    """`POST /admin/fail` with `{"fail_rate": 0.5}`: answer that share of requests with 503."""
    try:
        body = await request.json()
    except ValueError:
        return web.json_response({"error": "body must be JSON"}, status=400)
    if not isinstance(body, dict) or "fail_rate" not in body:
        return web.json_response({"error": 'body must be {"fail_rate": <0..1>}'}, status=400)
    try:
        rate = check_fail_rate(body["fail_rate"])
    except ValueError as error:
        return web.json_response({"error": str(error)}, status=400)
    request.app[FAILURES].fail_rate = rate
    return web.json_response({"fail_rate": rate})


async def healthz(request: web.Request) -> web.Response:
    """Liveness for an app served without drain.serve(), which brings its own probes."""
    return web.Response(text="ok")


def create_app(
    version: str,
    *,
    fail_rate: float = 0.0,
    rng: random.Random | None = None,
    latency_ms: float = 0.0,
    probes: bool = True,
) -> web.Application:
    """Build the reviews app for `version` ("v1", "v2" or "v3").

    `probes=False` leaves out `/healthz`, for drain.serve(), which installs its own
    `/healthz` and `/readyz`.
    """
    if version not in STAR_COLOR:
        raise ValueError(f"version must be one of {', '.join(VERSIONS)}, got {version!r}")
    if latency_ms < 0:
        raise ValueError(f"latency_ms must be >= 0, got {latency_ms!r}")
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[VERSION] = version
    app[LATENCY] = latency_ms / 1000.0
    app[FAILURES] = FailureSwitch(fail_rate, rng)
    # The id is digits only and bounded, so a request cannot smuggle anything into the
    # response; any other path segment is a 404 from the router.
    app.router.add_get(r"/reviews/{id:\d{1,9}}", get_reviews)
    # On the serving port, so a demo can flip it through the proxies. A real service would
    # keep such a switch on a loopback admin listener (like the sidecar's) or drop it.
    app.router.add_post("/admin/fail", set_fail_rate)
    if probes:
        app.router.add_get("/healthz", healthz)
    return app
