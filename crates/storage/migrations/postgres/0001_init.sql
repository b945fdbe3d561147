-- VoltRun schema, PostgreSQL flavour. The SQLite flavour beside it has the same tables and columns.
CREATE TABLE users (
    id            UUID PRIMARY KEY,
    email         TEXT NOT NULL UNIQUE,
    name          TEXT,
    password_hash TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL
);

CREATE TABLE refresh_tokens (
    id         UUID PRIMARY KEY,
    user_id    UUID NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    family_id  UUID NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    created_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    used_at    TIMESTAMPTZ,
    revoked_at TIMESTAMPTZ
);
CREATE INDEX refresh_tokens_family ON refresh_tokens(family_id);

CREATE TABLE api_keys (
    id           UUID PRIMARY KEY,
    user_id      UUID NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    prefix       TEXT NOT NULL,
    key_hash     TEXT NOT NULL UNIQUE,
    scopes       TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL,
    last_used_at TIMESTAMPTZ
);
CREATE INDEX api_keys_user ON api_keys(user_id, id);

CREATE TABLE code_blobs (
    sha256     TEXT PRIMARY KEY,
    data       BYTEA NOT NULL,
    size_bytes BIGINT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE functions (
    id              UUID PRIMARY KEY,
    user_id         UUID NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name            TEXT NOT NULL,
    description     TEXT NOT NULL,
    runtime         TEXT NOT NULL,
    handler         TEXT NOT NULL,
    code_sha256     TEXT NOT NULL REFERENCES code_blobs(sha256),
    code_size_bytes BIGINT NOT NULL,
    code_kind       TEXT NOT NULL,
    code_filename   TEXT,
    memory_mb       INTEGER NOT NULL,
    timeout_s       INTEGER NOT NULL,
    env_ciphertext  BYTEA NOT NULL,
    version         BIGINT NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL,
    UNIQUE (user_id, name)
);
CREATE INDEX functions_user ON functions(user_id, id);
CREATE INDEX functions_code ON functions(code_sha256);

-- No foreign key to functions: executions outlive the function they ran.
CREATE TABLE executions (
    id               UUID PRIMARY KEY,
    user_id          UUID NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    function_id      UUID NOT NULL,
    function_version BIGINT NOT NULL,
    status           TEXT NOT NULL,
    invocation_type  TEXT NOT NULL,
    input            JSONB NOT NULL,
    output           JSONB,
    error_type       TEXT,
    error_message    TEXT,
    created_at       TIMESTAMPTZ NOT NULL,
    started_at       TIMESTAMPTZ,
    finished_at      TIMESTAMPTZ,
    duration_ms      BIGINT,
    init_duration_ms BIGINT,
    memory_peak_mb   BIGINT,
    cold_start       BOOLEAN,
    node             TEXT,
    instance_id      TEXT,
    logs_bytes       BIGINT NOT NULL DEFAULT 0,
    logs_truncated   BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX executions_user ON executions(user_id, id);
CREATE INDEX executions_user_function ON executions(user_id, function_id, id);
CREATE INDEX executions_status ON executions(status);

CREATE TABLE execution_logs (
    execution_id UUID NOT NULL REFERENCES executions(id) ON DELETE CASCADE,
    seq          BIGINT NOT NULL,
    ts           TIMESTAMPTZ NOT NULL,
    stream       TEXT NOT NULL,
    line         TEXT NOT NULL,
    PRIMARY KEY (execution_id, seq)
);
