"""The operator UI for pools: one module per model family, registered on import."""

from pools.admin import accounts, jobs, proxies, runtime  # noqa: F401
