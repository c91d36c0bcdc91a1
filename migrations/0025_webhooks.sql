-- Outbound webhooks (`pulse_shared::webhooks`): endpoints, and one message per event and
-- endpoint, written in the transaction of the change it reports (the outbox) and delivered by
-- the webhooks role. The message's id is its `webhook-id` (`msg_<id>`), stable across retries.
CREATE TABLE webhooks (
    id               uuid PRIMARY KEY,
    workspace_id     uuid NOT NULL REFERENCES workspaces (id),
    url              text NOT NULL,
    events           text[] NOT NULL,
    secret           text NOT NULL,
    enabled          boolean NOT NULL DEFAULT true,
    disabled_reason  text,
    failing_since    timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhooks_by_workspace ON webhooks (workspace_id, created_at);

CREATE TABLE webhook_messages (
    id            bigserial PRIMARY KEY,
    webhook_id    uuid NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    workspace_id  uuid NOT NULL REFERENCES workspaces (id),
    type          text NOT NULL,
    payload       jsonb NOT NULL,
    state         text NOT NULL DEFAULT 'PENDING' CHECK (state IN ('PENDING', 'DELIVERED', 'FAILED')),
    attempts      integer NOT NULL DEFAULT 0,
    next_at       timestamptz NOT NULL DEFAULT now(),
    last_status   integer,
    last_error    text,
    delivered_at  timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_messages_due ON webhook_messages (next_at) WHERE state = 'PENDING';
CREATE INDEX webhook_messages_by_webhook ON webhook_messages (webhook_id, id);
