"""SOCI indexes: create, list, remove, and find them for lazy mounts."""
