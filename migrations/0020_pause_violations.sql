-- Sends recorded for a sequence while it was paused, after the pause's drain: what must never
-- happen. The scheduler's scrape finds them in the ledger (pause intervals from the audit log)
-- and keeps each here for good, so `pulse_paused_sequence_sends_total` never forgets one once
-- the sequence is resumed.
CREATE TABLE pause_violations (
    idempotency_key  text PRIMARY KEY,
    sequence_id      uuid NOT NULL REFERENCES sequences (id),
    paused_at        timestamptz NOT NULL,
    sent_at          timestamptz NOT NULL,
    found_at         timestamptz NOT NULL DEFAULT now()
);

-- The scrape reads the pauses of the last day through this, whatever the audit log's size.
CREATE INDEX audit_events_pauses ON audit_events (at) WHERE action = 'paused';
