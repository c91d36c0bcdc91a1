-- Claims are fenced: every claim of a ledger key gets its own id, and every write that settles
-- the claim (sent, deferred, failed, unknown, released) names it. A worker whose claim expired
-- and was taken over changes nothing.
ALTER TABLE send_ledger ADD COLUMN claim_id uuid;

-- Steps are identified by id; position only orders them. A deleted step keeps its place among
-- the live steps (the position of the live step before it), so a step deleted from the front
-- sits at 0 and what followed it still follows it.
ALTER TABLE sequence_steps DROP CONSTRAINT sequence_steps_position_check;
ALTER TABLE sequence_steps ADD CONSTRAINT sequence_steps_position_check
    CHECK (position >= 1 OR deleted_at IS NOT NULL AND position >= 0);
