-- Sends whose outcome is unknown and that no operator has settled yet, counted at every metrics
-- scrape (`pulse_unknown_sends_outstanding`): a small partial index, so the count never reads
-- the ledger. A send enters it when it becomes UNKNOWN and leaves it when it is resolved.
CREATE INDEX send_ledger_unknown ON send_ledger (created_at) WHERE state = 'UNKNOWN';
