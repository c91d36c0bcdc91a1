-- The scheduler finds due work per ACTIVE sequence, so a paused sequence's backlog (which stays
-- SCHEDULED and due) is never scanned: with the old (due_at) index every claim walked past all of
-- it first (100 ms per claim with 100,000 paused rows due, measured). Resume and edits read the
-- SCHEDULED runs of one sequence, which this index also serves.
CREATE INDEX step_runs_due_by_sequence ON step_runs (sequence_id, due_at) WHERE state = 'SCHEDULED';
DROP INDEX step_runs_due;
