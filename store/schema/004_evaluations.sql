-- One row per evaluated configuration and scenario (CONTRACT.md: `evaluations`). `mlscope evaluate`
-- never writes here: it sends each result as an `mlscope.evaluation` span with
-- `mlscope.evaluation.<column>` attributes (evaluation/results.py), and this materialized view
-- turns every such span the collector stores into a row, so results are exactly as durable as
-- spans. A retried or replayed span arrives with the same (trace_id, span_id): the ReplacingMergeTree
-- folds the copies and readers use the `evaluations` view (FINAL), which never shows one twice.
-- A float that was not measured (an attribute left off) reads as nan; a count or bound as 0.
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

CREATE MATERIALIZED VIEW IF NOT EXISTS evaluation_rows_mv TO evaluation_rows AS
SELECT
    trace_id,
    span_id,
    start_ns AS time_ns,
    attr_values[indexOf(attr_keys, 'mlscope.evaluation.run_id')] AS run_id,
    attr_values[indexOf(attr_keys, 'mlscope.evaluation.model')] AS model,
    attr_values[indexOf(attr_keys, 'mlscope.evaluation.model_version')] AS model_version,
    attr_values[indexOf(attr_keys, 'mlscope.evaluation.task')] AS task,
    attr_values[indexOf(attr_keys, 'mlscope.evaluation.framework')] AS framework,
    attr_values[indexOf(attr_keys, 'mlscope.evaluation.framework_version')] AS framework_version,
    attr_values[indexOf(attr_keys, 'mlscope.evaluation.execution_provider')] AS execution_provider,
    attr_values[indexOf(attr_keys, 'mlscope.evaluation.system')] AS system,
    attr_values[indexOf(attr_keys, 'mlscope.evaluation.system_name')] AS system_name,
    attr_values[indexOf(attr_keys, 'mlscope.evaluation.system_description')] AS system_description,
    toUInt64OrZero(attr_values[indexOf(attr_keys, 'mlscope.evaluation.batch_size')]) AS batch_size,
    attr_values[indexOf(attr_keys, 'mlscope.evaluation.scenario')] AS scenario,
    attr_values[indexOf(attr_keys, 'mlscope.evaluation.level')] AS level,
    toUInt64OrZero(attr_values[indexOf(attr_keys, 'mlscope.evaluation.queries')]) AS queries,
    toUInt64OrZero(attr_values[indexOf(attr_keys, 'mlscope.evaluation.samples')]) AS samples,
    if(has(attr_keys, 'mlscope.evaluation.latency_mean_ns'), toFloat64OrZero(attr_values[indexOf(attr_keys, 'mlscope.evaluation.latency_mean_ns')]), nan) AS latency_mean_ns,
    toUInt64OrZero(attr_values[indexOf(attr_keys, 'mlscope.evaluation.latency_p50_ns')]) AS latency_p50_ns,
    toUInt64OrZero(attr_values[indexOf(attr_keys, 'mlscope.evaluation.latency_p90_ns')]) AS latency_p90_ns,
    toUInt64OrZero(attr_values[indexOf(attr_keys, 'mlscope.evaluation.latency_p99_ns')]) AS latency_p99_ns,
    if(has(attr_keys, 'mlscope.evaluation.throughput'), toFloat64OrZero(attr_values[indexOf(attr_keys, 'mlscope.evaluation.throughput')]), nan) AS throughput,
    if(has(attr_keys, 'mlscope.evaluation.accuracy_top1'), toFloat64OrZero(attr_values[indexOf(attr_keys, 'mlscope.evaluation.accuracy_top1')]), nan) AS accuracy_top1,
    if(has(attr_keys, 'mlscope.evaluation.accuracy_top5'), toFloat64OrZero(attr_values[indexOf(attr_keys, 'mlscope.evaluation.accuracy_top5')]), nan) AS accuracy_top5,
    toUInt64OrZero(attr_values[indexOf(attr_keys, 'mlscope.evaluation.accuracy_samples')]) AS accuracy_samples,
    if(has(attr_keys, 'mlscope.evaluation.server_qps'), toFloat64OrZero(attr_values[indexOf(attr_keys, 'mlscope.evaluation.server_qps')]), nan) AS server_qps,
    toUInt64OrZero(attr_values[indexOf(attr_keys, 'mlscope.evaluation.server_bound_ns')]) AS server_bound_ns,
    toUInt8(attr_values[indexOf(attr_keys, 'mlscope.evaluation.server_bound_met')] IN ('true', '1')) AS server_bound_met,
    attr_values[indexOf(attr_keys, 'mlscope.evaluation.divergence_reference')] AS divergence_reference,
    toUInt64OrZero(attr_values[indexOf(attr_keys, 'mlscope.evaluation.divergence_samples')]) AS divergence_samples,
    if(has(attr_keys, 'mlscope.evaluation.divergence_max_abs_diff'), toFloat64OrZero(attr_values[indexOf(attr_keys, 'mlscope.evaluation.divergence_max_abs_diff')]), nan) AS divergence_max_abs_diff,
    if(has(attr_keys, 'mlscope.evaluation.divergence_top1_agreement'), toFloat64OrZero(attr_values[indexOf(attr_keys, 'mlscope.evaluation.divergence_top1_agreement')]), nan) AS divergence_top1_agreement,
    start_date AS day
FROM span_rows
WHERE name = 'mlscope.evaluation';

CREATE VIEW IF NOT EXISTS evaluations AS SELECT * FROM evaluation_rows FINAL;
