-- One row per evaluated configuration and scenario (CONTRACT.md: `evaluations`). `mlscope evaluate`
-- never writes here: it sends each result as an `mlscope.evaluation` span with
-- `mlscope.evaluation.<column>` attributes (evaluation/results.py), and a materialized view
-- (005_evaluation_origin.sql) turns every such span the collector stores into a row, so results
-- are exactly as durable as spans. A retried or replayed span arrives with the same
-- (trace_id, span_id): the ReplacingMergeTree folds the copies and readers use the `evaluations`
-- view (FINAL), which never shows one twice.
CREATE TABLE IF NOT EXISTS evaluation_rows (
    trace_id String,
    span_id String,
    time_ns UInt64,
    run_id String,
    model String,
    model_version String,
    task String,
    framework String,
    framework_version String,
    execution_provider String,
    system String,
    system_name String,
    system_description String,
    batch_size UInt64,
    scenario String,
    level String,
    queries UInt64,
    samples UInt64,
    latency_mean_ns Float64,
    latency_p50_ns UInt64,
    latency_p90_ns UInt64,
    latency_p99_ns UInt64,
    throughput Float64,
    accuracy_top1 Float64,
    accuracy_top5 Float64,
    accuracy_samples UInt64,
    server_qps Float64,
    server_bound_ns UInt64,
    server_bound_met UInt8,
    divergence_reference String,
    divergence_samples UInt64,
    divergence_max_abs_diff Float64,
    divergence_top1_agreement Float64,
    day Date DEFAULT toDate(toDateTime(intDiv(time_ns, 1000000000)))
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (model, framework, batch_size, scenario, trace_id, span_id);
