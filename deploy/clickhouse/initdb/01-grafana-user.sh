#!/bin/bash
# Runs once, when the ClickHouse container starts on an empty data volume: a read-only user for
# Grafana that can read the ccproxy database and nothing else. The analytics service uses
# CLICKHOUSE_USER (the image's own variables) and creates its tables itself.
set -euo pipefail
clickhouse client --user "$CLICKHOUSE_USER" --password "$CLICKHOUSE_PASSWORD" --multiquery <<SQL
CREATE DATABASE IF NOT EXISTS ccproxy;
CREATE USER IF NOT EXISTS grafana IDENTIFIED WITH sha256_password BY '${GRAFANA_CLICKHOUSE_PASSWORD}'
    SETTINGS readonly = 2;  -- reads only; 2 (not 1) lets the plugin pass query settings
GRANT SELECT ON ccproxy.* TO grafana;
SQL
