"""The auth service: upstream credentials, their refresh, and (later) client keys."""
