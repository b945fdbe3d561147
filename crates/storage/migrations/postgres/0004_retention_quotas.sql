-- The queue quota counts one user's queued executions.
CREATE INDEX executions_user_status ON executions(user_id, status);
