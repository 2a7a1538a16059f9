"""OpenAI Chat Completions and Responses over Anthropic Messages, both directions: pure
translation, no I/O (formats.py is what the routes use). docs/openai.md is the user's view."""
