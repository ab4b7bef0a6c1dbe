-- Predictors across machines (`mlscope predictor --server URL`, `mlscope evaluate --remote`).
-- Both tables are append-only logs folded to their latest row: a heartbeat or a job's state
-- change is one insert, ReplacingMergeTree keeps the row with the highest version column, and
-- readers use the FINAL views. The query service stamps every version with its own clock, never
-- the predictor's, so clock skew between machines cannot reorder a job's states.

-- The latest heartbeat of each predictor: what it is (its HW/SW stack and what it can run) and
-- when the query service last heard from it.
CREATE TABLE IF NOT EXISTS predictor_heartbeats (
    predictor_id String,
    name String,
    host String,
    pid UInt64,
    system String,
    system_name String,
    system_description String,
    frameworks Array(String),
    execution_providers Array(String),
    label_keys Array(String),
    label_values Array(String),
    started_ns UInt64,
    seen_ns UInt64
) ENGINE = ReplacingMergeTree(seen_ns)
ORDER BY predictor_id;

CREATE VIEW IF NOT EXISTS predictors AS SELECT * FROM predictor_heartbeats FINAL;

-- Evaluation jobs, one per (run, predictor): the request (manifest texts and the plan, as JSON)
-- and the latest state: queued -> running -> done | failed.
CREATE TABLE IF NOT EXISTS job_states (
    job_id String,
    run_id String,
    predictor_id String,
    created_ns UInt64,
    updated_ns UInt64,
    state String,
    message String,
    results UInt64,
    request String
) ENGINE = ReplacingMergeTree(updated_ns)
ORDER BY job_id;

CREATE VIEW IF NOT EXISTS jobs AS SELECT * FROM job_states FINAL;
