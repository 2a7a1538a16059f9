"""The sdk-worker: Claude Code runs for SDK-mode requests, fed by an arq queue."""
