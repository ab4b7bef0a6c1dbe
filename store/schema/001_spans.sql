-- One row per received span. ReplacingMergeTree on (trace_id, span_id) folds the copies that
-- retries and spool replays can write; readers use the `spans` view (FINAL) so no query ever
-- sees a duplicate. ORDER BY starts with trace_id: fetching one trace is a primary-key range.
-- Attributes are parallel key/value arrays because Map does not exist in ClickHouse 18.16.
CREATE TABLE IF NOT EXISTS span_rows (
    trace_id String,
    span_id String,
    parent_span_id String,
    name String,
    kind String,
    service String,
    level String,
    start_ns UInt64,
    end_ns UInt64,
    duration_ns UInt64,
    status_code String,
    status_message String,
    scope_name String,
    scope_version String,
    attr_keys Array(String),
    attr_values Array(String),
    resource_keys Array(String),
    resource_values Array(String),
    event_times_ns Array(UInt64),
    event_names Array(String),
    event_attrs_json Array(String),
    links_json String,
    start_date Date DEFAULT toDate(toDateTime(intDiv(start_ns, 1000000000)))
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(start_date)
ORDER BY (trace_id, span_id);

CREATE VIEW IF NOT EXISTS spans AS SELECT * FROM span_rows FINAL;
