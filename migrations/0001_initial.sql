-- Pulse schema: the single source of truth. Every row below `workspaces` carries
-- `workspace_id`, and no query crosses it.

CREATE TABLE workspaces (
    id          uuid PRIMARY KEY,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id            uuid PRIMARY KEY,
    workspace_id  uuid NOT NULL REFERENCES workspaces (id),
    key_sha256    bytea NOT NULL UNIQUE,
    label         text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE leads (
    id               uuid PRIMARY KEY,
    workspace_id     uuid NOT NULL REFERENCES workspaces (id),
    email            text NOT NULL,            -- stored lower-cased
    first_name       text,
    last_name        text,
    timezone         text,
    attributes       jsonb NOT NULL DEFAULT '{}'::jsonb,
    tags             text[] NOT NULL DEFAULT '{}',
    lists            text[] NOT NULL DEFAULT '{}',
    score            integer,
    unsubscribed_at  timestamptz,
    bounced_at       timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (workspace_id, email)
);

CREATE TABLE sequences (
    id            uuid PRIMARY KEY,
    workspace_id  uuid NOT NULL REFERENCES workspaces (id),
    name          text NOT NULL,
    status        text NOT NULL DEFAULT 'ACTIVE' CHECK (status IN ('ACTIVE', 'PAUSED', 'DELETED')),
    timezone      text NOT NULL DEFAULT 'UTC',
    sender_from   text NOT NULL,
    version       integer NOT NULL DEFAULT 1,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sequences_workspace ON sequences (workspace_id, created_at);

CREATE TABLE sequence_steps (
    id           uuid PRIMARY KEY,
    sequence_id  uuid NOT NULL REFERENCES sequences (id),
    position     integer NOT NULL CHECK (position >= 1),
    timing       jsonb NOT NULL,
    subject      text NOT NULL,
    body         text NOT NULL,
    version      integer NOT NULL DEFAULT 1,
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (sequence_id, position)
);

CREATE TABLE triggers (
    id            uuid PRIMARY KEY,
    workspace_id  uuid NOT NULL REFERENCES workspaces (id),
    sequence_id   uuid NOT NULL REFERENCES sequences (id),
    position      integer NOT NULL,
    kind          text NOT NULL CHECK (kind IN ('tag_applied', 'list_added', 'lead_score')),
    tag           text,
    list          text,
    min_score     integer,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX triggers_match ON triggers (workspace_id, kind);

CREATE TABLE enrollments (
    id            uuid PRIMARY KEY,
    workspace_id  uuid NOT NULL REFERENCES workspaces (id),
    sequence_id   uuid NOT NULL REFERENCES sequences (id),
    lead_id       uuid NOT NULL REFERENCES leads (id),
    status        text NOT NULL DEFAULT 'ACTIVE'
                  CHECK (status IN ('ACTIVE', 'COMPLETED', 'CANCELLED', 'INELIGIBLE', 'FAILED')),
    end_reason    text,
    current_step  integer NOT NULL DEFAULT 1,
    generation    integer NOT NULL DEFAULT 1,
    source        text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    ended_at      timestamptz,
    UNIQUE (sequence_id, lead_id, generation)
);
-- The dedupe: at most one ACTIVE enrollment per (sequence, lead).
CREATE UNIQUE INDEX enrollments_one_active ON enrollments (sequence_id, lead_id) WHERE status = 'ACTIVE';
CREATE INDEX enrollments_by_sequence ON enrollments (sequence_id, status, created_at);

CREATE TABLE step_runs (
    id             uuid PRIMARY KEY,
    workspace_id   uuid NOT NULL REFERENCES workspaces (id),
    sequence_id    uuid NOT NULL REFERENCES sequences (id),
    enrollment_id  uuid NOT NULL REFERENCES enrollments (id),
    step_id        uuid NOT NULL REFERENCES sequence_steps (id),
    position       integer NOT NULL,
    generation     integer NOT NULL,
    due_at         timestamptz NOT NULL,
    state          text NOT NULL DEFAULT 'SCHEDULED'
                   CHECK (state IN ('SCHEDULED', 'QUEUED', 'SENT', 'SKIPPED', 'CANCELLED', 'FAILED', 'UNKNOWN')),
    attempts       integer NOT NULL DEFAULT 0,
    last_error     text,
    -- The content snapshot, frozen by the scheduler when the step is queued.
    subject        text,
    body           text,
    from_addr      text,
    to_addr        text,
    message_id     text,
    queued_at      timestamptz,
    sent_at        timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (enrollment_id, step_id, generation)
);
CREATE INDEX step_runs_due ON step_runs (due_at) WHERE state = 'SCHEDULED';
CREATE INDEX step_runs_by_enrollment ON step_runs (enrollment_id, position);

-- What actually went out. Never deleted, not even with its sequence.
CREATE TABLE send_ledger (
    enrollment_id    uuid NOT NULL REFERENCES enrollments (id),
    step_id          uuid NOT NULL REFERENCES sequence_steps (id),
    generation       integer NOT NULL,
    idempotency_key  text NOT NULL UNIQUE,
    workspace_id     uuid NOT NULL REFERENCES workspaces (id),
    sequence_id      uuid NOT NULL REFERENCES sequences (id),
    lead_id          uuid NOT NULL REFERENCES leads (id),
    step_run_id      uuid NOT NULL REFERENCES step_runs (id),
    position         integer NOT NULL,
    state            text NOT NULL CHECK (state IN ('SENDING', 'SENT', 'DEFERRED', 'FAILED', 'UNKNOWN')),
    message_id       text NOT NULL,
    smtp_code        integer,
    smtp_reply       text,
    attempts         integer NOT NULL DEFAULT 1,
    claimed_at       timestamptz NOT NULL DEFAULT now(),
    sent_at          timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (enrollment_id, step_id, generation)
);
CREATE INDEX send_ledger_by_sequence ON send_ledger (sequence_id, created_at);

-- Trigger event ids already processed, with what processing them did.
CREATE TABLE processed_events (
    workspace_id  uuid NOT NULL REFERENCES workspaces (id),
    event_id      text NOT NULL,
    result        jsonb NOT NULL,
    processed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, event_id)
);

-- The capture transport's outbox, used when no SMTP relay is configured.
CREATE TABLE dev_outbox (
    id            bigserial PRIMARY KEY,
    workspace_id  uuid NOT NULL REFERENCES workspaces (id),
    message_id    text NOT NULL,
    mail_from     text NOT NULL,
    rcpt_to       text NOT NULL,
    subject       text NOT NULL,
    body          text NOT NULL,
    raw           text NOT NULL,
    accepted_at   timestamptz NOT NULL DEFAULT now()
);
