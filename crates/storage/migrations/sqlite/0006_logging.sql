-- Per-function logging (Lambda's LoggingConfig): the log format, and the application log level,
-- which is set exactly when the format is JSON.
ALTER TABLE functions ADD COLUMN log_format TEXT NOT NULL DEFAULT 'text';
ALTER TABLE functions ADD COLUMN log_level TEXT;
