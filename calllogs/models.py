"""Call logs: the `CallLog` model and its buffered recorder arrive with the call-logs issue."""
