-- Taking control of a live sequence: settings, end dates, edit history, audit.

-- Sequence settings. `send_window` is {"days": ["mon", …], "start": "HH:MM", "end": "HH:MM"}
-- in the lead's time zone (else the sequence's). `max_sends_per_minute` caps sends of this
-- sequence, enforced by the senders.
ALTER TABLE sequences
    ADD COLUMN send_window           jsonb,
    ADD COLUMN end_date              timestamptz,
    ADD COLUMN max_sends_per_minute  integer CHECK (max_sends_per_minute > 0);

-- Steps can end, and are soft-deleted (step runs and the ledger keep pointing at them).
ALTER TABLE sequence_steps
    ADD COLUMN end_date    timestamptz,
    ADD COLUMN deleted_at  timestamptz;
ALTER TABLE sequence_steps DROP CONSTRAINT sequence_steps_sequence_id_position_key;
CREATE UNIQUE INDEX sequence_steps_live_position
    ON sequence_steps (sequence_id, position) WHERE deleted_at IS NULL;

-- Every version of a sequence as it was saved; sends are traced to the version that rendered them.
CREATE TABLE sequence_versions (
    sequence_id  uuid NOT NULL REFERENCES sequences (id),
    version      integer NOT NULL,
    snapshot     jsonb NOT NULL,
    actor        text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sequence_id, version)
);
ALTER TABLE step_runs ADD COLUMN sequence_version integer;

-- Who did what to a sequence, and when.
CREATE TABLE audit_events (
    id             bigserial PRIMARY KEY,
    workspace_id   uuid NOT NULL REFERENCES workspaces (id),
    sequence_id    uuid NOT NULL REFERENCES sequences (id),
    enrollment_id  uuid REFERENCES enrollments (id),
    actor          text NOT NULL,
    action         text NOT NULL,
    before         jsonb,
    after          jsonb,
    at             timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_events_by_sequence ON audit_events (sequence_id, id);

-- Sends in flight per sequence and per enrollment, for pause and cancel to wait on.
CREATE INDEX send_ledger_sending ON send_ledger (sequence_id) WHERE state = 'SENDING';
-- Pending step runs per sequence, for pause, resume, edit and delete.
CREATE INDEX step_runs_pending ON step_runs (sequence_id) WHERE state IN ('SCHEDULED', 'QUEUED');
