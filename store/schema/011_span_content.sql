-- A span re-sent with the ids of a stored one: a retry (the same content) must still collapse,
-- but other content under the same ids is kept beside the first, never a silent overwrite (the
-- timeline warns about such a span). `content_hash` hashes every column but the ids and the
-- derived start_date; the store computes it, so every writer (the collector, a spool replay, the
-- tests) gets it, and the rows stored before this migration get theirs when copied below.
--
-- The sorting key becomes (trace_id, span_id, content_hash). Neither ClickHouse 18.16 nor chdb lets
-- MODIFY ORDER BY take a column with a DEFAULT, so the table is rebuilt: a keyed copy, filled,
-- swapped in by RENAME. Each step can run again after an interruption (the old table is dropped
-- only once the copy has taken its rows). chdb's materialized views follow the renamed old table,
-- so both views over span_rows (002, 007) are recreated on the new one, as is the `spans` view,
-- whose `SELECT *` column list is fixed when it is created. The copy inserts each block it reads
-- (one part, so one month) on its own: chdb refuses an insert block touching over 100 months.
ALTER TABLE span_rows ADD COLUMN content_hash UInt64 DEFAULT cityHash64(parent_span_id, name, kind, service, level, start_ns, end_ns, duration_ns, status_code, status_message, scope_name, scope_version, attr_keys, attr_values, resource_keys, resource_values, event_times_ns, event_names, event_attrs_json, links_json);

CREATE TABLE IF NOT EXISTS span_rows_keyed AS span_rows ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(start_date)
ORDER BY (trace_id, span_id, content_hash);

INSERT INTO span_rows_keyed SELECT * FROM span_rows SETTINGS min_insert_block_size_rows = 1;

DROP TABLE IF EXISTS span_rows_unkeyed;

RENAME TABLE span_rows TO span_rows_unkeyed, span_rows_keyed TO span_rows;

DROP TABLE span_rows_unkeyed;

DROP TABLE IF EXISTS trace_index_mv;

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

DROP TABLE IF EXISTS spans;

CREATE VIEW IF NOT EXISTS spans AS SELECT * FROM span_rows FINAL;
