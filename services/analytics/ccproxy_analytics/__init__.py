"""Analytics: access-log events from a Redis stream into ClickHouse, and the log query API."""
