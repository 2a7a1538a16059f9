-- The access log: one row per finished client request (ccproxy_core.access_log.AccessLogEvent).
-- ReplacingMergeTree on (hour, request_id): an event written twice (a crash between insert and
-- ack, a retried XADD) collapses to one row; queries read it with FINAL.
CREATE TABLE IF NOT EXISTS {db}.access_log
(
    request_id            String,
    started_at            DateTime64(3, 'UTC'),
    first_byte_at         Nullable(DateTime64(3, 'UTC')),
    finished_at           DateTime64(3, 'UTC'),
    duration_ms           Float64,
    ttft_ms               Nullable(Float64),
    mode                  LowCardinality(String),
    endpoint              LowCardinality(String),
    method                LowCardinality(String),
    client_format         LowCardinality(String),
    key_id                LowCardinality(String),
    key_name              LowCardinality(String),
    account               LowCardinality(String),
    model_requested       LowCardinality(String),
    model_used            LowCardinality(String),
    stream                Bool,
    status                UInt16,
    outcome               LowCardinality(String),
    error_type            LowCardinality(String),
    stop_reason           LowCardinality(String),
    input_tokens          UInt64,
    output_tokens         UInt64,
    cache_read_tokens     UInt64,
    cache_write_tokens    UInt64,
    cost_usd              Float64,
    sdk_cost_usd          Nullable(Float64),
    upstream_request_id   String,
    user_agent            String,
    client_addr           String,
    quota_status          LowCardinality(String),
    quota_5h_utilization  Nullable(Float32),
    quota_7d_utilization  Nullable(Float32),
    retry_after_s         Nullable(Float32),
    sdk_session_id        String,
    sdk_turns             UInt32,
    sdk_tool_uses         UInt32,
    permissions_requested UInt32,
    permissions_approved  UInt32,
    permissions_denied    UInt32,
    inserted_at           DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(inserted_at)
PARTITION BY toYYYYMM(started_at)
ORDER BY (toStartOfHour(started_at), request_id)
SETTINGS index_granularity = 8192;
