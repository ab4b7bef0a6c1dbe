-- An evaluation re-sent with the ids of a stored one: a retry (the same content) must still fold
-- into one row, but other content under the same ids is kept beside it and flagged, never a silent
-- overwrite (span_rows keeps both copies since 011; evaluation_rows folded them by its key).
-- `content_hash` is the span's own (011's), so an evaluation row names the span copy it came from;
-- the `evaluations` view adds `conflict` (1 on every copy of a span stored with more than one
-- content), so a reader never counts a configuration twice without seeing why.
--
-- The sorting key gains content_hash. Neither ClickHouse 18.16 nor chdb lets MODIFY ORDER BY take
-- an added column, so the table is rebuilt as 011 rebuilt span_rows: a keyed copy swapped in by
-- RENAME, the materialized view recreated on it (chdb's follows the renamed old table). The rows
-- are then made again from their spans: the evaluation spans are inserted into span_rows once more,
-- which folds them there (same key) and runs the new view over each stored copy, so copies the old
-- key had folded come back. Rows whose span is no longer stored are copied as they are, with
-- content_hash 0. Each step can run again after an interruption. Inserts take one read block (one
-- part, so one month) at a time: chdb refuses an insert block touching over 100 months.
ALTER TABLE evaluation_rows ADD COLUMN content_hash UInt64;

CREATE TABLE IF NOT EXISTS evaluation_rows_keyed AS evaluation_rows ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (model, framework, batch_size, scenario, trace_id, span_id, content_hash);

INSERT INTO evaluation_rows_keyed SELECT * FROM evaluation_rows
WHERE (trace_id, span_id) NOT IN (SELECT trace_id, span_id FROM span_rows WHERE name = 'mlscope.evaluation')
SETTINGS min_insert_block_size_rows = 1;

DROP TABLE IF EXISTS evaluation_rows_unkeyed;

RENAME TABLE evaluation_rows TO evaluation_rows_unkeyed, evaluation_rows_keyed TO evaluation_rows;

DROP TABLE evaluation_rows_unkeyed;

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
    start_date AS day,
    content_hash
FROM span_rows
WHERE name = 'mlscope.evaluation';

INSERT INTO span_rows SELECT * FROM span_rows WHERE name = 'mlscope.evaluation' SETTINGS min_insert_block_size_rows = 1;

DROP TABLE IF EXISTS evaluations;

CREATE VIEW IF NOT EXISTS evaluations AS
SELECT *, (trace_id, span_id) IN (
    SELECT trace_id, span_id FROM evaluation_rows GROUP BY trace_id, span_id HAVING uniqExact(content_hash) > 1
) AS conflict
FROM evaluation_rows FINAL;
