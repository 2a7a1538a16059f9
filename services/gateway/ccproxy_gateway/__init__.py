"""The gateway: the public API. Client auth, translation, dispatch, metrics."""
