"""The node agent's disk cache: the last good config of each service, one file per service."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from urllib.parse import quote

from reference.config_sync import CorruptCache, Snapshot, load_cache, save_cache

__all__ = ["ServiceCache"]

log = logging.getLogger(__name__)


class ServiceCache:
    """Read and write `<dir>/<service>.json` atomically, through reference/config_sync.py."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def path_for(self, service: str) -> Path:
        """The cache file of `service`; the name is percent-encoded so it stays in the folder."""
        # quote() turns "/" and every other byte that could climb out of the folder or clash
        # with the temp files (".name.xxx.tmp") into %XX; "." and ".." gain the ".json" suffix.
        return self.directory / f"{quote(service, safe='')}.json"

    async def load(self, service: str) -> Snapshot | None:
        """The cached snapshot of `service`, or None when there is none or it is unreadable."""
        path = self.path_for(service)
        try:
            return await asyncio.to_thread(load_cache, path)
        except (CorruptCache, OSError) as error:
            # A damaged cache must never stop an app from registering: the control plane's
            # next answer replaces it.
            log.warning("ignoring config cache %s: %s", path, error)
            return None

    async def save(self, service: str, snapshot: Snapshot) -> None:
        """Persist `snapshot` as the last good config of `service`; log, never raise, on failure."""
        path = self.path_for(service)
        try:
            # fsync takes milliseconds on a busy disk; keep it off the event loop, which is
            # serving every app on the node.
            await asyncio.to_thread(self._write, path, snapshot)
        except OSError as error:
            # The config is applied and served; only the offline copy lags behind.
            log.warning(
                "could not cache config version %s of %s: %s", snapshot.version, service, error
            )

    def _write(self, path: Path, snapshot: Snapshot) -> None:
        # Owner-only folder: configs can carry endpoints and secrets. An existing folder keeps
        # the mode its owner gave it.
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        save_cache(path, snapshot)
