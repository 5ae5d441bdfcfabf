"""Build benchmark images and push them, converted to eStargz, for ``bench/api_example.py``.

    python3 bench/api_images.py --registry 127.0.0.1:5000 --scale 1 seed-large python ml small-files

Each image is built by the benchmark harness (debootstrap + generated payload, cached
under --work) and converted by lazypull's own converter into ``REGISTRY/api/NAME:esgz``;
``--gzip`` also pushes the unconverted image as ``REGISTRY/api/NAME:gzip``.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from lazypull.bench.images import IMAGES, build_image
from lazypull.convert.copy import copy_image
from lazypull.convert.image import ConvertOptions, convert_image
from lazypull.registry.options import RegistryOptions
from lazypull.registry.stores import open_store


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--registry", required=True, help="HOST:PORT of a plain-HTTP registry")
    p.add_argument("--work", type=Path, default=Path("bench/work"), help="image build cache")
    p.add_argument("--scale", type=float, default=1.0, help="payload scale (1: the seed's twenty 50 MB files)")
    p.add_argument("--gzip", action="store_true", help="also push the unconverted gzip image")
    p.add_argument("images", nargs="+", choices=sorted(IMAGES))
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    ropts = RegistryOptions(plain_http=True)
    args.work.mkdir(parents=True, exist_ok=True)
    for name in args.images:
        t0 = time.monotonic()
        layout = build_image(IMAGES[name], args.work, args.scale)
        print(f"{name}: built in {time.monotonic() - t0:.0f}s", flush=True)
        base = f"{args.registry}/api/{name}"
        if args.gzip:
            copy_image(layout, open_store(f"{base}:gzip", ropts, for_push=True), tag="gzip")
        t0 = time.monotonic()
        convert_image(layout, open_store(f"{base}:esgz", ropts, for_push=True), ConvertOptions(oci=True), tag="esgz")
        print(f"{name}: converted and pushed as {base}:esgz in {time.monotonic() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
