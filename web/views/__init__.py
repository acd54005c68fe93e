"""The web UI's views: thin, they call data_access selectors/services and web helpers."""
