-- trace_id -> time range, root span, service, span count; fed by a materialized view so that
-- listing traces never scans span_rows. uniqExact over span_id keeps counts right when a span
-- is written twice; the partial states are merged at read time (GROUP BY trace_id).
CREATE TABLE IF NOT EXISTS trace_index (
    trace_id String,
    day Date,
    start_ns AggregateFunction(min, UInt64),
    end_ns AggregateFunction(max, UInt64),
    span_count AggregateFunction(uniqExact, String),
    root_name AggregateFunction(anyIf, String, UInt8),
    root_service AggregateFunction(anyIf, String, UInt8),
    any_service AggregateFunction(any, String),
    model AggregateFunction(anyIf, String, UInt8),
    framework AggregateFunction(anyIf, String, UInt8)
) ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (trace_id, day);

CREATE MATERIALIZED VIEW IF NOT EXISTS trace_index_mv TO trace_index AS
SELECT
    trace_id,
    start_date AS day,
    minState(start_ns) AS start_ns,
    maxState(end_ns) AS end_ns,
    uniqExactState(span_id) AS span_count,
    anyIfState(name, parent_span_id = '') AS root_name,
    anyIfState(service, parent_span_id = '') AS root_service,
    anyState(service) AS any_service,
    anyIfState(attr_values[indexOf(attr_keys, 'mlscope.model.name')], has(attr_keys, 'mlscope.model.name')) AS model,
    anyIfState(attr_values[indexOf(attr_keys, 'mlscope.framework.name')], has(attr_keys, 'mlscope.framework.name')) AS framework
FROM span_rows
GROUP BY trace_id, day;
