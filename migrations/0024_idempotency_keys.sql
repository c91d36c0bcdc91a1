-- `Idempotency-Key` on the routes that create (`services/api/src/idempotency.rs`): the first
-- answer to a key, replayed for the same key and body for 24 hours. `status` is NULL while the
-- first request runs.
CREATE TABLE idempotency_keys (
    workspace_id    uuid NOT NULL REFERENCES workspaces (id),
    route           text NOT NULL,
    key             text NOT NULL,
    request_sha256  bytea NOT NULL,
    status          integer,
    location        text,
    response        bytea,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, route, key)
);
CREATE INDEX idempotency_keys_expiry ON idempotency_keys (created_at);
