-- Sending limits (`docs/sending-rules.md`): lists of `{"max": N, "per": "ISO-8601 duration"}`
-- on a mailbox, a recipient domain, a workspace and a sequence. NULL: no limit (the sender's
-- snapshot then parses nothing). A sequence's `max_sends_per_minute` stays, as one more limit
-- `{"max": N, "per": "PT1M"}`.
ALTER TABLE mailboxes ADD COLUMN limits jsonb,
                      -- The zone a `P1D` limit of this mailbox rolls over in, at midnight.
                      ADD COLUMN timezone text NOT NULL DEFAULT 'UTC';
ALTER TABLE workspaces ADD COLUMN limits jsonb,
                       ADD COLUMN timezone text NOT NULL DEFAULT 'UTC';
ALTER TABLE sequences ADD COLUMN limits jsonb;

-- Limits per recipient domain (`gmail.com`), within a workspace: every send to an address at
-- the domain needs a slot.
CREATE TABLE domain_limits (
    workspace_id  uuid NOT NULL REFERENCES workspaces (id),
    domain        text NOT NULL,
    limits        jsonb NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, domain)
);

-- The staleness guard: a step that cannot go out within `max_lateness` (an ISO-8601 duration)
-- of the time it first came due is skipped, and its enrollment moves on. `first_due_at` keeps
-- that time when a hold, a retry or a resume moves `due_at` (NULL: `due_at` is still it).
ALTER TABLE sequence_steps ADD COLUMN max_lateness text;
ALTER TABLE step_runs ADD COLUMN first_due_at timestamptz;

-- Guardrails (`pulse_shared::guardrails`): when a sequence pauses itself. NULL: the defaults.
ALTER TABLE sequences ADD COLUMN guardrails jsonb;

-- Priority: when limits collide, due steps of higher priority are claimed first (0–9, higher
-- first; a step waiting longer gains a level per PULSE_PRIORITY_AGING_MS).
ALTER TABLE sequences ADD COLUMN priority smallint NOT NULL DEFAULT 5
    CHECK (priority BETWEEN 0 AND 9);
