"""A read-only FUSE server speaking the kernel protocol directly on /dev/fuse.

Why not a binding: measured on this class of machine, declining OPEN (so the kernel
caches opens) and FUSE passthrough are what make small-file and cached-file reads
fast, and neither pyfuse3 nor llfuse exposes them. The filesystem logic stays behind
the small :class:`~lazypull.fs.fuse.ops.ReadOnlyFS` interface, so the server can be
swapped without touching it.
"""
