"""``lazypull store``: an additional layer store for Podman and CRI-O (containers/storage).

The protocol, as containers/storage (``drivers/overlay``, ``store.go``; v1.43 in Debian 12's
podman 4.3) and containers/image (``storage/storage_dest.go``) use it:

- ``storage.conf`` names the store in ``[storage.options] additionallayerstores``; with a
  ``:ref`` suffix a layer is looked up as ``STORE/<base64(ref)>/<compressed digest>/``, the
  reference base64-encoded with the standard alphabet (it may contain ``/``: one name may span
  several path components). The option is the overlay driver's
  (``--storage-opt overlay.additionallayerstore=STORE:ref`` on the command line; podman
  4.3.1 stats STORE when it starts); with the vfs driver podman refuses to start ("vfs
  driver does not support vfs.additionallayerstore options").
- A layer exists for containers/storage when ``diff``, ``info`` and ``blob`` can be stat'ed
  there; any failure means "not here" and the layer is pulled as usual.
- ``info`` is JSON decoded into its ``Layer``: ``compressed-diff-digest``, ``compressed-size``,
  ``diff-digest`` (the config's diff_id: the layer ID chain is built from it),
  ``compression`` (pkg/archive: 2 gzip, 4 zstd); ``diff-size`` is optional and left out (not
  known before the layer is read). It is read at the lookup and again when the layer is made.
- The layer's ``diff`` in the graph root becomes an absolute symlink to ``STORE/.../diff``,
  which overlayfs is given as a lower directory (the kernel follows symlinks there: our
  ``diff`` is itself a symlink to the layer server's FUSE mount of that layer).
- ``blob`` is the compressed blob (read only when the image is copied out, e.g. pushed).
- Reference counting: containers/storage creates ``use`` (``open(O_CREAT)``) in the layer
  directory at each lookup and again when a graph-root layer is made from it, and removes the
  layer directory (``rmdir``) once per lookup (when the pull is done) and once when that
  graph-root layer is deleted (``podman rmi``). A counting store answers both with ENOENT
  (anything else: a warning, "GC doesn't seem to be supported"). Seen with podman 4.3: a
  pull creates ``use`` twice per layer and removes once; ``rmi`` removes once more.
"""
