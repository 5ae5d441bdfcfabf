"""The benchmark harness: lazy pull vs full pull on a shaped network, measured honestly."""
