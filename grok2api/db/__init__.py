"""Database backends of the project (see `grok2api.db.postgresql`)."""
