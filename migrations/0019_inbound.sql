-- What comes back: replies, auto-replies, bounces and complaints, read by the inbound role (its
-- SMTP listener) or reported through `POST /v1/events` and the provider webhooks.
--
-- A message is recorded here, classified and matched to the send it answers, *before* the
-- listener says 250; what it does (ending enrollments, suppressing the address, marking the send
-- BOUNCED or COMPLAINED) happens after, once (`processed_at`), so a crash in between loses nothing.
CREATE TABLE inbound_messages (
    id               bigserial PRIMARY KEY,
    received_at      timestamptz NOT NULL DEFAULT now(),
    -- `smtp`, `api`, `ses`, `sendgrid`.
    source           text NOT NULL,
    kind             text NOT NULL CHECK (kind IN ('reply', 'auto_reply', 'bounce', 'soft_bounce',
                                                   'complaint', 'unsubscribe', 'other')),
    mail_from        text,
    rcpt_to          text[] NOT NULL DEFAULT '{}',
    -- SHA-256 of the bytes received, and the bytes themselves (SMTP only).
    digest           text NOT NULL,
    raw              bytea,
    -- The send it answers (when matched) and what that names.
    workspace_id     uuid,
    idempotency_key  text,
    enrollment_id    uuid,
    sequence_id      uuid,
    lead_id          uuid,
    -- The address a bounce or a complaint is about; a reply's sender.
    address          text,
    -- Status code, diagnostic, subject, a short excerpt: what the operator is shown.
    detail           jsonb NOT NULL DEFAULT '{}',
    processed_at     timestamptz,
    outcome          text
);
CREATE INDEX inbound_messages_pending ON inbound_messages (id) WHERE processed_at IS NULL;
CREATE INDEX inbound_messages_by_enrollment ON inbound_messages (enrollment_id)
    WHERE enrollment_id IS NOT NULL;
CREATE INDEX inbound_messages_by_workspace ON inbound_messages (workspace_id, id);

-- A send a bounce or complaint came back for: SENT, then BOUNCED or COMPLAINED (`sent_at` and
-- the relay's reply are kept; `feedback_at` and `feedback` say what came back and when).
ALTER TABLE send_ledger DROP CONSTRAINT send_ledger_state_check,
    ADD CONSTRAINT send_ledger_state_check CHECK (state IN ('SENDING', 'SENT', 'DEFERRED', 'FAILED',
                                                            'UNKNOWN', 'BOUNCED', 'COMPLAINED')),
    ADD COLUMN feedback_at timestamptz,
    ADD COLUMN feedback text;
-- Replies name a send by its Message-ID, bounces by the VERP token that carries its hash: both
-- are found by `<pulse.HASH`, the Message-ID up to its domain.
CREATE INDEX send_ledger_message ON send_ledger (split_part(message_id, '@', 1));

-- Transient bounces in a row per address; `PULSE_SOFT_BOUNCE_LIMIT` of them suppress it. A reply
-- from the address clears the count.
CREATE TABLE soft_bounces (
    workspace_id  uuid NOT NULL,
    email         text NOT NULL,
    count         integer NOT NULL,
    last_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workspace_id, email)
);

-- How far a reply reaches: its enrollment (default), every sequence of the lead, or nothing.
ALTER TABLE sequences ADD COLUMN exit_on_reply text NOT NULL DEFAULT 'enrollment'
    CHECK (exit_on_reply IN ('enrollment', 'all_sequences', 'none'));
