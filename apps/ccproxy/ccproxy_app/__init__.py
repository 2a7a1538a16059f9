"""The ccproxy command's composition root."""
