-- VoltRun schema, SQLite flavour. The PostgreSQL flavour beside it has the same tables and columns.
CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    email         TEXT NOT NULL UNIQUE,
    name          TEXT,
    password_hash TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL
);

CREATE TABLE refresh_tokens (
    id         TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    family_id  TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    used_at    TEXT,
    revoked_at TEXT
);
CREATE INDEX refresh_tokens_family ON refresh_tokens(family_id);

CREATE TABLE api_keys (
    id           TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    prefix       TEXT NOT NULL,
    key_hash     TEXT NOT NULL UNIQUE,
    scopes       TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    last_used_at TEXT
);
CREATE INDEX api_keys_user ON api_keys(user_id, id);

CREATE TABLE code_blobs (
    sha256     TEXT PRIMARY KEY,
    data       BLOB NOT NULL,
    size_bytes INTEGER NOT NULL,
    created_at TEXT NOT NULL
);

CREATE TABLE functions (
    id              TEXT PRIMARY KEY,
    user_id         TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name            TEXT NOT NULL,
    description     TEXT NOT NULL,
    runtime         TEXT NOT NULL,
    handler         TEXT NOT NULL,
    code_sha256     TEXT NOT NULL REFERENCES code_blobs(sha256),
    code_size_bytes INTEGER NOT NULL,
    code_kind       TEXT NOT NULL,
    code_filename   TEXT,
    memory_mb       INTEGER NOT NULL,
    timeout_s       INTEGER NOT NULL,
    env_ciphertext  BLOB NOT NULL,
    version         INTEGER NOT NULL,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    UNIQUE (user_id, name)
);
CREATE INDEX functions_user ON functions(user_id, id);
CREATE INDEX functions_code ON functions(code_sha256);

-- No foreign key to functions: executions outlive the function they ran.
CREATE TABLE executions (
    id               TEXT PRIMARY KEY,
    user_id          TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    function_id      TEXT NOT NULL,
    function_version INTEGER NOT NULL,
    status           TEXT NOT NULL,
    invocation_type  TEXT NOT NULL,
    input            TEXT NOT NULL,
    output           TEXT,
    error_type       TEXT,
    error_message    TEXT,
    created_at       TEXT NOT NULL,
    started_at       TEXT,
    finished_at      TEXT,
    duration_ms      INTEGER,
    init_duration_ms INTEGER,
    memory_peak_mb   INTEGER,
    cold_start       INTEGER,
    node             TEXT,
    instance_id      TEXT,
    logs_bytes       INTEGER NOT NULL DEFAULT 0,
    logs_truncated   INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX executions_user ON executions(user_id, id);
CREATE INDEX executions_user_function ON executions(user_id, function_id, id);
CREATE INDEX executions_status ON executions(status);

CREATE TABLE execution_logs (
    execution_id TEXT NOT NULL REFERENCES executions(id) ON DELETE CASCADE,
    seq          INTEGER NOT NULL,
    ts           TEXT NOT NULL,
    stream       TEXT NOT NULL,
    line         TEXT NOT NULL,
    PRIMARY KEY (execution_id, seq)
);
