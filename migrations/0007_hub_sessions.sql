-- Hub sign-ins: the browser holds a random token in an http-only cookie; only its SHA-256 is
-- stored. Each session has its own CSRF token, which every Hub form must send back.
CREATE TABLE hub_sessions (
    token_sha256  bytea PRIMARY KEY,
    workspace_id  uuid NOT NULL REFERENCES workspaces (id),
    actor         text NOT NULL,
    csrf_token    text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL
);
CREATE INDEX hub_sessions_expiry ON hub_sessions (expires_at);
