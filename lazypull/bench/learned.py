"""Mode ``lazypull-learned``: the image as published (the ``lazypull`` mode's eStargz image,
the same digest: nothing is rebuilt), with a prefetch profile recorded by one earlier run of
its workload (``lazypull profile record``) and published beside it. Every measured run is a
cold node that finds the profile on the image's first Prepare and applies it; the other
lazypull modes' nodes do not look profiles up, so they measure the image alone.
"""

from __future__ import annotations

from pathlib import Path

from lazypull.bench.images import BenchImage
from lazypull.optimize.optimizer import OptimizeOptions
from lazypull.optimize.profilerecord import record_profile
from lazypull.prefetch.profile import Profile
from lazypull.prefetch.publish import push_profile, remove_profiles
from lazypull.registry.options import RegistryOptions
from lazypull.registry.repository import RegistryStore
from lazypull.soci.create import image_manifest

MODE = "lazypull-learned"
NO_PROFILES = "[prefetch_profile]\nbudget_bytes = 0\n"  # the daemon config of the other lazy modes


def record(img: BenchImage, ref: str, workdir: Path) -> Profile:
    """One run of *img*'s workload on *ref* (lazily mounted, runc), as a profile."""
    store = RegistryStore.open(ref, RegistryOptions(plain_http=True))
    subject, manifest = image_manifest(store)
    opts = OptimizeOptions(entrypoint=list(img.workload), period=120, workdir=workdir)
    profile, _ = record_profile(store, subject, manifest, opts)
    return profile


def publish(ref: str, profile: Profile) -> None:
    """*profile* as the image's only one: images sharing a build (seed-large, seed-read) each
    run with their own workload's."""
    store = RegistryStore.open(ref, RegistryOptions(plain_http=True))
    remove_profiles(store)
    push_profile(store, profile)
