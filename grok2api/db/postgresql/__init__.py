"""PostgreSQL whose broken connections are replaced before their next use (see `base`)."""
