-- Opt-outs. A suppression is an address or a whole domain a workspace must never mail again,
-- with why (`reason`) and where it came from (`source`: the API caller, `one-click`, an import).
-- Checked when a lead is enrolled and again by the sender after its claim. Lifting one is
-- recorded in `suppression_lifts` (who, why, when).
CREATE TABLE suppressions (
    workspace_id  uuid NOT NULL REFERENCES workspaces (id),
    kind          text NOT NULL CHECK (kind IN ('email', 'domain')),
    value         text NOT NULL,
    reason        text NOT NULL
                  CHECK (reason IN ('unsubscribed', 'bounced', 'complained', 'manual', 'imported')),
    source        text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, kind, value)
);
CREATE TABLE suppression_lifts (
    id            bigserial PRIMARY KEY,
    workspace_id  uuid NOT NULL REFERENCES workspaces (id),
    kind          text NOT NULL,
    value         text NOT NULL,
    reason        text NOT NULL,
    was_reason    text NOT NULL,
    actor         text NOT NULL,
    at            timestamptz NOT NULL DEFAULT now()
);
-- The key that signs one-click unsubscribe tokens when PULSE_UNSUBSCRIBE_SECRET is not set:
-- made once, at random, by the first role that needs it.
CREATE TABLE unsubscribe_keys (
    id          smallint PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    secret      bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
