-- The windowed read's cache, reshaped so that a read touches about as many rows as it draws.
-- span_depths is a cache the query service refills on demand: the 009 rows are dropped.
--
-- span_depths: one row per span of one fill of a trace. `fill` is the fill's id (its start time,
-- ns, with random low bits): two query processes filling the same trace at once each write their
-- own rows, and reads name one fill (the smallest id of the trace's current row count
-- `span_count`, in span_depth_fills); a fill deletes the trace's earlier fills of another count.
-- The parent and the viewer's attributes (attr_keys/attr_values) are what a span drawn as itself
-- carries, so a read needs nothing from span_rows (it finds them by duration class and start). `level` is the span's stored level;
-- `duration_bits` the bit length of its duration (a span of class c lasts less than 2^c ns), so
-- that a read asks, per class, only for the starts that can reach its window (ORDER BY start
-- within a class).
DROP TABLE IF EXISTS span_depths;
CREATE TABLE IF NOT EXISTS span_depths (
    trace_id String,
    span_count UInt64,
    fill UInt64,
    span_id String,
    parent_span_id String,
    attr_keys Array(String),
    attr_values Array(String),
    service String,
    name String,
    level String,
    depth UInt64,
    duration_bits UInt64,
    start_ns UInt64,
    end_ns UInt64
) ENGINE = MergeTree
ORDER BY (trace_id, fill, duration_bits, start_ns);

-- The pyramid: per fill, for each stored bucket width 2^bucket_log2 ns, the spans narrower than
-- a bucket merged per (service, depth, bucket of their start, name, level): their count, summed
-- time, first start and last end, and one span's id (the span's own when `spans` is 1), built
-- level on level (a width's rows from the narrower one's); span_depth_tiles summarizes each
-- bucket for reads.
CREATE TABLE IF NOT EXISTS span_depth_buckets (
    trace_id String,
    span_count UInt64,
    fill UInt64,
    bucket_log2 UInt64,
    bucket UInt64,
    service String,
    depth UInt64,
    name String,
    level String,
    spans UInt64,
    total_ns UInt64,
    first_ns UInt64,
    last_ns UInt64,
    span_id String
) ENGINE = MergeTree
ORDER BY (trace_id, fill, bucket_log2, bucket);

-- The pyramid as reads take it: per fill, bucket width, service, depth and bucket, one row for
-- that bucket's rows of span_depth_buckets (its names and levels): the name holding most of its
-- time (`name`, that time in `name_ns`; ties: the greatest name), the level holding most
-- (`level`, `level_ns`), and their count, summed time, first start, last end and one span's id,
-- so that a zoomed-out read reads about one row per track, depth and pixel.
CREATE TABLE IF NOT EXISTS span_depth_tiles (
    trace_id String,
    span_count UInt64,
    fill UInt64,
    bucket_log2 UInt64,
    bucket UInt64,
    service String,
    depth UInt64,
    name String,
    name_ns UInt64,
    level String,
    level_ns UInt64,
    spans UInt64,
    total_ns UInt64,
    first_ns UInt64,
    last_ns UInt64,
    span_id String
) ENGINE = MergeTree
ORDER BY (trace_id, fill, bucket_log2, bucket);

-- One row per complete fill, written after its rows and buckets: a read uses only a fill
-- listed here, so a fill still being written (or cut short) is never read. `first_bucket_log2`
-- to `last_bucket_log2` are the widths the pyramid holds (none when first > last).
CREATE TABLE IF NOT EXISTS span_depth_fills (
    trace_id String,
    span_count UInt64,
    fill UInt64,
    first_bucket_log2 UInt64,
    last_bucket_log2 UInt64,
    filled_ns UInt64
) ENGINE = MergeTree
ORDER BY (trace_id, span_count, fill);
