-- Sessions: one per login, the family of refresh tokens it rotates through. Revocation (logout, a
-- refresh token presented twice) is recorded here once, and ends the session's refresh tokens and
-- its access tokens, which carry its id. expires_at is its absolute lifetime, however often it is
-- refreshed. Existing families become sessions that end when their latest token does.
CREATE TABLE sessions (
    id         UUID PRIMARY KEY,
    user_id    UUID NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    revoked_at TIMESTAMPTZ
);
CREATE INDEX sessions_user ON sessions(user_id);
INSERT INTO sessions (id, user_id, created_at, expires_at, revoked_at)
    SELECT family_id, (array_agg(user_id))[1], MIN(created_at), MAX(expires_at), MAX(revoked_at)
    FROM refresh_tokens GROUP BY family_id;
ALTER TABLE refresh_tokens DROP COLUMN revoked_at;
