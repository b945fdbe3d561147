-- Retention finds finished executions by when they finished; the queue quota counts one user's
-- queued executions.
CREATE INDEX executions_finished ON executions(finished_at);
CREATE INDEX executions_user_status ON executions(user_id, status);
