-- `owner`: the fingerprint of the token that first registered the predictor (mlscope.auth
-- token_fingerprint; '' when auth is off, and in rows older than this column). Dispatch refuses
-- another token acting as that predictor (heartbeats, its jobs, their state changes), so a token
-- cannot take over a predictor and receive or read the jobs sent to it. Stored, so the binding
-- survives a restart.
--
-- As in 005, the view is recreated after the column exists.
ALTER TABLE predictor_heartbeats ADD COLUMN owner String AFTER seen_ns;

DROP TABLE IF EXISTS predictors;

CREATE VIEW IF NOT EXISTS predictors AS SELECT * FROM predictor_heartbeats FINAL;
