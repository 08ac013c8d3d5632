"""The operator UI for pools: one module per model family, registered on import."""

from pools.admin import accounts, runtime  # noqa: F401
