-- `spans_dropped`: spans of the evaluation's measurement (its model, layer and library spans)
-- that the agent did not deliver (dropped under back-pressure or refused by the collector), 0
-- when none were: a row with a count lost part of its trace, though its figures were measured.
--
-- As in 005, the materialized view and the view are recreated after the column exists.
ALTER TABLE evaluation_rows ADD COLUMN spans_dropped UInt64 DEFAULT 0 AFTER job_id;

DROP TABLE IF EXISTS evaluation_rows_mv;

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
    attr_values[indexOf(attr_keys, 'mlscope.evaluation.predictor')] AS predictor,
    attr_values[indexOf(attr_keys, 'mlscope.evaluation.job_id')] AS job_id,
    toUInt64OrZero(attr_values[indexOf(attr_keys, 'mlscope.evaluation.spans_dropped')]) AS spans_dropped,
    start_date AS day
FROM span_rows
WHERE name = 'mlscope.evaluation';

DROP TABLE IF EXISTS evaluations;

CREATE VIEW IF NOT EXISTS evaluations AS SELECT * FROM evaluation_rows FINAL;
