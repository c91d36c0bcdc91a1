-- Recovery in seconds. Every sender registers itself in `workers` and heartbeats; a graceful
-- shutdown deletes its row. A ledger claim names its owner (`owner_id`), and `wire_at` is set,
-- fenced by the claim, right before the message body goes to the relay: a claim without it has
-- sent nothing and can be given back at any time (its sender cannot send once the mark fails);
-- a claim with it may have reached the relay and becomes UNKNOWN if its owner dies.
CREATE TABLE workers (
    id            uuid PRIMARY KEY,
    role          text NOT NULL,
    host          text NOT NULL,
    pid           integer NOT NULL,
    started_at    timestamptz NOT NULL DEFAULT now(),
    heartbeat_at  timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE send_ledger ADD COLUMN owner_id uuid, ADD COLUMN wire_at timestamptz;
CREATE INDEX send_ledger_sending_owner ON send_ledger (owner_id) WHERE state = 'SENDING';
