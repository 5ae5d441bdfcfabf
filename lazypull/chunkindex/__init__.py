"""Chunk indexes: per-chunk digests of an artifact's raw blobs, a referrer of the artifact."""
