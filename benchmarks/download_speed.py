"""Download speed: the scraper's concurrent downloader versus one image at a time (the original's
way), side by side in one run, against the local fixture image host with an injected latency per
request (so the network, not this machine, is what the concurrency hides).

    python benchmarks/download_speed.py [--images 48] [--latency 0.25] [--concurrency 16]

Both runs do the whole job per image: fetch over HTTPS, decode with Pillow, hash, duplicate check,
JPEG encode, atomic save and manifest row. Prints a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from imgclf.scrape.downloader import DownloadSettings, download, make_client
from imgclf.scrape.engines import ImageHit
from imgclf.scrape.store import DatasetStore, Origin
from imgclf.testing.scrape_fixture.pictures import Route, encode, picture
from imgclf.testing.scrape_fixture.server import FixtureServer

REPO_ROOT = Path(__file__).resolve().parents[1]


GOAL = 5.0


def photo_like(seed: int) -> bytes:
    """A 640x480 JPEG of about the size of a web photo (block pattern plus noise)."""
    base = np.asarray(picture(seed, (640, 480)), dtype=np.int16)
    noise = np.random.default_rng(seed).integers(-12, 13, base.shape)
    pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
    return encode(Image.fromarray(pixels, "RGB"), quality=85)


def run_once(server: FixtureServer, names: list[str], concurrency: int) -> float:
    settings = DownloadSettings(
        concurrency=concurrency,
        verify=str(server.cert),
        timeout_s=30,
        deadline_s=120,
        allow_private_hosts=True,  # the fixture is on 127.0.0.1
    )
    with tempfile.TemporaryDirectory(prefix="imgclf-bench-") as root:
        store = DatasetStore(root, near_duplicate_distance=6)

        def sink(hit, final_url, image):
            origin = Origin("bench", "bench", hit.url, final_url, None)
            return store.save_unless_duplicate("train", "bench", image, origin)

        async def fetch_all() -> dict:
            async with make_client(settings) as client:
                hits = [ImageHit(server.img(name)) for name in names]
                return await download(hits, len(hits), sink, client, settings)

        start = time.perf_counter()
        counts = asyncio.run(fetch_all())
        elapsed = time.perf_counter() - start
    if counts.get("downloaded") != len(names):
        raise SystemExit(f"benchmark broken: expected {len(names)} downloads, got {dict(counts)}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--latency", type=float, default=0.25, help="seconds added per request")
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="imgclf-bench-cert-") as cert_dir:
        server = FixtureServer(Path(cert_dir)).start()
        try:
            names = [f"bench{n}.jpg" for n in range(args.images)]
            server.routes.update({name: Route(photo_like(5000 + n)) for n, name in enumerate(names)})
            mean_kib = np.mean([len(server.routes[name].body) for name in names]) / 1024
            server.image_latency_s = args.latency
            sequential = run_once(server, names, concurrency=1)
            concurrent = run_once(server, names, concurrency=args.concurrency)
        finally:
            server.stop()

    speedup = sequential / concurrent
    print(
        f"{args.images} JPEGs of 640x480 (mean {mean_kib:.0f} KiB) over local HTTPS, "
        f"{args.latency * 1000:.0f} ms latency injected per request; "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}\n"
    )
    print("| downloader | concurrency | time (s) | images/s |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| one at a time (the original's way) | 1 | {sequential:.2f} | {args.images / sequential:.1f} |")
    print(f"| imgclf | {args.concurrency} | {concurrent:.2f} | {args.images / concurrent:.1f} |")
    verdict = "goal met" if speedup >= GOAL else "below the goal"
    print(f"\nspeed-up: {speedup:.1f}x (goal: at least {GOAL:.0f}x, {verdict})")


if __name__ == "__main__":
    main()
