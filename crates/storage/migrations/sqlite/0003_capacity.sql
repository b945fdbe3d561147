-- Per-function capacity: reserved concurrency (NULL: the engine's default) and instances kept warm.
ALTER TABLE functions ADD COLUMN max_concurrency INTEGER;
ALTER TABLE functions ADD COLUMN min_instances INTEGER NOT NULL DEFAULT 0;
CREATE INDEX functions_min_instances ON functions(min_instances) WHERE min_instances > 0;
