-- Layers (Lambda's): numbered immutable versions of an archive a user attaches to functions.
CREATE TABLE layers (
    id              TEXT PRIMARY KEY,
    user_id         TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name            TEXT NOT NULL,
    version         INTEGER NOT NULL,
    description     TEXT NOT NULL,
    code_sha256     TEXT NOT NULL REFERENCES code_blobs(sha256),
    code_size_bytes INTEGER NOT NULL,
    unzipped_bytes  INTEGER NOT NULL,
    created_at      TEXT NOT NULL,
    UNIQUE (user_id, name, version)
);
CREATE INDEX layers_user ON layers(user_id, id);
CREATE INDEX layers_code ON layers(code_sha256);

-- Which layer versions a function uses: the function row keeps them (as JSON, in order) for
-- reading; this table lets the database refuse to delete a version a function still uses.
ALTER TABLE functions ADD COLUMN layers TEXT NOT NULL DEFAULT '[]';
CREATE TABLE function_layers (
    function_id TEXT NOT NULL REFERENCES functions(id) ON DELETE CASCADE,
    layer_id    TEXT NOT NULL REFERENCES layers(id),
    position    INTEGER NOT NULL,
    PRIMARY KEY (function_id, position)
);
CREATE INDEX function_layers_layer ON function_layers(layer_id);

-- The last version number given out per layer name: numbers are never reused, even after the
-- highest version is deleted, so `name:N` always means the same archive.
CREATE TABLE layer_names (
    user_id      TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    last_version INTEGER NOT NULL,
    PRIMARY KEY (user_id, name)
);
