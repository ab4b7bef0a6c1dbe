-- One row per metric data point (gauge, sum, or histogram summary). Like spans, copies from
-- retries fold on the sort key and readers use the `metrics` view.
CREATE TABLE IF NOT EXISTS metric_points (
    service String,
    name String,
    description String,
    unit String,
    kind String,
    time_ns UInt64,
    start_time_ns UInt64,
    value Float64,
    count UInt64,
    bucket_bounds Array(Float64),
    bucket_counts Array(UInt64),
    attr_keys Array(String),
    attr_values Array(String),
    resource_keys Array(String),
    resource_values Array(String),
    scope_name String,
    series_hash UInt64,
    date Date DEFAULT toDate(toDateTime(intDiv(time_ns, 1000000000)))
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(date)
ORDER BY (service, name, series_hash, time_ns);

CREATE VIEW IF NOT EXISTS metrics AS SELECT * FROM metric_points FINAL;
