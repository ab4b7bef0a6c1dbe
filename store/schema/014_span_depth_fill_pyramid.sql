-- A fill is readable in two steps: its span_depths rows first (a row here with pyramid_pending 1:
-- reads draw every window from the spans), then its pyramid (span_depth_buckets and
-- span_depth_tiles), after which a second row of the same fill says pyramid_pending 0 and reads
-- take the zoomed-out windows from the tiles. So the first windowed read of a trace is answered
-- once its spans are written, and the pyramid is built after it. Fills made before this column
-- were written whole: they read 0, built.
ALTER TABLE span_depth_fills ADD COLUMN pyramid_pending UInt64;
