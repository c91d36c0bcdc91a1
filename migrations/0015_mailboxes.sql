-- Sender mailboxes: a sales team sends from its reps' mailboxes, each with its own relay and
-- credentials. Secrets (`smtp_password`, `dkim_private_key`) are write-only: the API never
-- returns them. `smtp_url` is stored without its password. A deleted mailbox keeps its row (step
-- runs and enrollments name it).
CREATE TABLE mailboxes (
    id                uuid PRIMARY KEY,
    workspace_id      uuid NOT NULL REFERENCES workspaces (id),
    address           text NOT NULL,
    display_name      text,
    reply_to          text,
    smtp_url          text,
    smtp_password     text,
    dkim_selector     text,
    dkim_private_key  text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    deleted_at        timestamptz,
    CHECK ((dkim_selector IS NULL) = (dkim_private_key IS NULL))
);
CREATE UNIQUE INDEX mailboxes_live_address ON mailboxes (workspace_id, lower(address))
    WHERE deleted_at IS NULL;

-- A sequence sends either from `sender_from` or from its mailboxes, one per lead, chosen at
-- enrollment in turn. `mailbox_turns` counts the enrollments given one so far: a table of its
-- own, so taking turns never locks the sequence row that ingest holds `FOR SHARE`.
ALTER TABLE sequences ALTER COLUMN sender_from DROP NOT NULL,
                      ADD COLUMN sender_mailboxes uuid[],
                      ADD CONSTRAINT sequences_sender
                          CHECK (sender_from IS NOT NULL OR sender_mailboxes IS NOT NULL);
CREATE TABLE mailbox_turns (
    sequence_id  uuid PRIMARY KEY,
    turn         bigint NOT NULL
);
-- The mailbox an enrollment keeps for all its steps, and the one a queued run was frozen with.
ALTER TABLE enrollments ADD COLUMN mailbox_id uuid;
ALTER TABLE step_runs ADD COLUMN mailbox_id uuid;
