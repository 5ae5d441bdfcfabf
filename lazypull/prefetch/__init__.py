"""Prefetch profiles: what an image's workload read first, learned from real runs and
published beside the image (an OCI referrer), so every node can fetch it ahead."""
