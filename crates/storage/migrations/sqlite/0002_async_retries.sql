-- Asynchronous invocations: per-function retry count, attempt bookkeeping and backoff.
ALTER TABLE functions ADD COLUMN max_retries INTEGER NOT NULL DEFAULT 2;
ALTER TABLE executions ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE executions ADD COLUMN not_before TEXT;
CREATE TABLE execution_attempts (
    execution_id  TEXT NOT NULL REFERENCES executions(id) ON DELETE CASCADE,
    attempt       INTEGER NOT NULL,
    status        TEXT NOT NULL,
    error_type    TEXT,
    error_message TEXT,
    started_at    TEXT NOT NULL,
    finished_at   TEXT NOT NULL,
    duration_ms   INTEGER NOT NULL,
    PRIMARY KEY (execution_id, attempt)
);
CREATE INDEX executions_queue ON executions(status, invocation_type, not_before);
