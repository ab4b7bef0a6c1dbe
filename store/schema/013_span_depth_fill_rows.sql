-- A fill is read for its trace's row count in span_rows, and that count can come back over other
-- rows: a copy a retry wrote, not merged yet, is counted; once merged away, a new span gives the
-- count back. `distinct_rows` is how many distinct rows (span id and content) the fill was made
-- from: a fill made from as many as its count is the trace's whole content at that count (distinct
-- rows only arrive), and one made over copies is read only while the trace still has that many
-- distinct rows. Fills made before this column are dropped: the windowed read's cache, remade on
-- the next read or by the settler.
ALTER TABLE span_depth_fills ADD COLUMN distinct_rows UInt64;
TRUNCATE TABLE span_depth_fills;
TRUNCATE TABLE span_depth_tiles;
TRUNCATE TABLE span_depth_buckets;
TRUNCATE TABLE span_depths;
