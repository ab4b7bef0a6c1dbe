-- Each span's depth in its trace's tree, beside what a windowed read draws, so that the store
-- merges the spans narrower than a pixel itself (GROUP BY service, depth, pixel) instead of
-- every span of the window coming out. Depth cannot be known at ingest (a parent may arrive
-- after its children, in another request): the query service fills a trace's rows on its first
-- windowed read, for the span count the trace index gave then; a trace that has grown since is
-- filled again under its new count (reads name the count, so older rows are never mixed in).
CREATE TABLE IF NOT EXISTS span_depths (
    trace_id String,
    span_count UInt64,
    span_id String,
    service String,
    name String,
    depth UInt64,
    start_ns UInt64,
    end_ns UInt64
) ENGINE = MergeTree
ORDER BY (trace_id, span_count, start_ns);
