"""OpenAI Chat Completions and Responses over Anthropic Messages, both directions: pure translation,
no I/O (the routes use chat.CHAT and responses.RESPONSES). docs/openai.md is the user's view."""
