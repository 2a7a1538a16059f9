"""The api-forwarder: one Anthropic request in, the upstream's answer out, byte for byte."""
