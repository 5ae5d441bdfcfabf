"""Where requests for a registry go: one endpoint, a mirror or the registry itself.

Apart from the configuration that lists them (``hosts.py``: lazypull's ``[resolver]``;
``hostsdir.py``: containerd's ``hosts.toml``), so that both build the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass

ALL_CAPABILITIES = frozenset({"pull", "resolve", "push"})


@dataclass(frozen=True)
class Endpoint:
    """One place to send requests for a registry: a mirror or the upstream itself."""

    host: str
    plain_http: bool = False
    skip_verify: bool = False
    ca: str | tuple[str, ...] | None = None  # PEM file(s), added to the system's roots
    headers: tuple[tuple[str, str], ...] = ()
    is_mirror: bool = False
    timeout: float = 30.0
    path: str = "/v2"  # the API root (containerd's override_path sets it as written)
    client_cert: tuple[str, str] | None = None  # (certificate, key; "" when the key is in the certificate file)
    capabilities: frozenset[str] = ALL_CAPABILITIES  # pull, resolve, push (containerd's)
    ns_query: bool = False  # add ?ns=REGISTRY, as containerd does for its hosts.toml mirrors

    @property
    def base_url(self) -> str:
        return f"{'http' if self.plain_http else 'https'}://{self.host}"

    @property
    def tls(self) -> tuple[str | tuple[str, ...] | None, bool, tuple[str, str] | None]:
        """What picks the connection pool: CA, skip_verify, client certificate."""
        return (self.ca, self.skip_verify, self.client_cert)

    @property
    def api_url(self) -> str:
        """Where ``<repository>/manifests/...`` and ``/blobs/...`` paths go."""
        return self.base_url + self.path
