"""ccproxy permissions: every SDK-mode tool use waits here for a human decision."""
