"""Media cache: the content-addressed store arrives with the media issue."""
