"""Fetch the pinned mermaid bundle that the site serves itself, and check its integrity.

The site must render diagrams with the network unplugged, so mermaid is served from
docs/assets/vendor/mermaid/ rather than from a CDN. The bundle is not committed (about 3 MB
of minified JavaScript); this script brings it with `npm pack`, the ordinary npm client,
and refuses a tarball whose sha512 differs from the one pinned here.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

VERSION = "11.17.2"
# The `integrity` field npm records for mermaid@11.17.2 (Subresource Integrity format).
INTEGRITY = "sha512-V6K3C8EBdEsPFZXSKMJe6ppQOENxuHARr9GvHX4hh47lAbhMRD9qf4oEK7LoaRQxULMa80/qt5gHO73aCleBBg=="

ROOT = Path(__file__).resolve().parent.parent
DEST = ROOT / "docs" / "assets" / "vendor" / "mermaid"
WANTED = {"package/dist/mermaid.min.js": "mermaid.min.js", "package/LICENSE": "LICENSE"}
STAMP = DEST / "VERSION"


def sri_sha512(path: Path) -> str:
    digest = hashlib.sha512(path.read_bytes()).digest()
    return "sha512-" + base64.b64encode(digest).decode()


def up_to_date() -> bool:
    if not STAMP.exists() or not all((DEST / name).exists() for name in WANTED.values()):
        return False
    return STAMP.read_text().split() == [VERSION, INTEGRITY]


def fail(message: str) -> None:
    print(f"vendor_mermaid: {message}", file=sys.stderr)
    raise SystemExit(1)


def fetch(workdir: Path) -> Path:
    npm = shutil.which("npm")
    if npm is None:
        fail(
            f"npm (Node.js) is needed once to fetch mermaid {VERSION}, which renders the site's "
            f"diagrams offline. Install Node.js, or put mermaid@{VERSION}'s dist/mermaid.min.js "
            f"and LICENSE into {DEST.relative_to(ROOT)}/ and write '{VERSION} {INTEGRITY}' "
            f"into its VERSION file."
        )
    result = subprocess.run(
        [npm, "pack", f"mermaid@{VERSION}", "--json", "--ignore-scripts",
         "--pack-destination", str(workdir)],
        capture_output=True, text=True,
    )
    if result.returncode != 0:
        fail(f"`npm pack mermaid@{VERSION}` failed:\n{result.stderr.strip()}")
    filename = json.loads(result.stdout)[0]["filename"]
    return workdir / filename


def install(tarball: Path) -> None:
    actual = sri_sha512(tarball)
    if actual != INTEGRITY:
        fail(f"mermaid@{VERSION} tarball has integrity {actual}, expected {INTEGRITY}; refusing it.")
    staging = Path(tempfile.mkdtemp(dir=DEST.parent, prefix=".mermaid-"))
    staging.chmod(0o755)
    try:
        with tarfile.open(tarball, "r:gz") as archive:
            for member, name in WANTED.items():
                source = archive.extractfile(member)
                if source is None:
                    fail(f"{member} is missing from the mermaid@{VERSION} tarball.")
                (staging / name).write_bytes(source.read())
        (staging / "VERSION").write_text(f"{VERSION} {INTEGRITY}\n")
        # Swap the whole folder in at once so a half-fetched bundle is never served.
        if DEST.exists():
            shutil.rmtree(DEST)
        staging.rename(DEST)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def main() -> None:
    if up_to_date():
        return
    DEST.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as workdir:
        install(fetch(Path(workdir)))
    print(f"vendor_mermaid: mermaid {VERSION} is in {DEST.relative_to(ROOT)}/ (integrity checked)")


if __name__ == "__main__":
    main()
