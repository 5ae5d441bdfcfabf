"""lazypull: start containers before their image is downloaded.

Layers are mounted straight from the registry (eStargz, zstd:chunked) and only the
bytes a workload touches are fetched, verified and cached.
"""

__version__ = "0.1.0"
