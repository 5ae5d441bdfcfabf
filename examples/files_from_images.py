"""Read files out of container images without pulling them, and show how little is fetched.

    python3 examples/files_from_images.py --plain-http BIG_IMAGE [IMAGE ...]

1. From BIG_IMAGE: one large file (``--big-file``, default the seed image's
   ``data/file-00.txt``, 50 MB) and ``etc/os-release``.
2. ``var/lib/dpkg/status`` of every image: the installed packages of each.

Each image starts from an empty cache (a temporary directory), so the numbers are what
a first read costs: bytes fetched from the registry vs the image's compressed size.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import lazypull


def mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--plain-http", action="store_true")
    p.add_argument("--big-file", default="data/file-00.txt")
    p.add_argument("images", nargs="+")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as cache:
        t0 = time.monotonic()
        with lazypull.open_image(args.images[0], plain_http=args.plain_http, cache_dir=cache) as img:
            data = img.read_bytes(args.big_file)
            big = img.stats()
            t1 = time.monotonic()
            os_release = img.read_text("etc/os-release")
            st = img.stats()
        name = next(line for line in os_release.splitlines() if line.startswith("PRETTY_NAME="))
        print(f"{args.images[0]}: {name}")
        print(f"  {args.big_file}: {mb(len(data))} in {t1 - t0:.2f} s, fetched {mb(big.bytes_fetched)}")
        print(
            f"  etc/os-release: {len(os_release)} bytes in {time.monotonic() - t1:.2f} s,"
            f" fetched {(st.bytes_fetched - big.bytes_fetched) / 1e3:.1f} kB more"
        )
        print(f"  fetched {mb(st.bytes_fetched)} of the image's {mb(st.image_bytes)}")

    print("\nvar/lib/dpkg/status of each image:")
    fetched = total = 0
    for ref in args.images:
        with tempfile.TemporaryDirectory() as cache:
            t0 = time.monotonic()
            with lazypull.open_image(ref, plain_http=args.plain_http, cache_dir=cache) as img:
                status = img.read_text("var/lib/dpkg/status")
                st = img.stats()
        packages = [line[9:] for line in status.splitlines() if line.startswith("Package: ")]
        fetched, total = fetched + st.bytes_fetched, total + st.image_bytes
        print(
            f"  {ref}: {len(packages)} packages in {time.monotonic() - t0:.2f} s,"
            f" fetched {mb(st.bytes_fetched)} of {mb(st.image_bytes)}"
        )
    print(f"  all {len(args.images)} images: fetched {mb(fetched)} of {mb(total)} ({100 * fetched / total:.2f}%)")


if __name__ == "__main__":
    main()
