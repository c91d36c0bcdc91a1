-- Index work per send (issue "Halve the CPU each send costs"; docs/BENCHMARKS.md).
--
-- 1. What settles a run no claim was made for (a hold, a deferral before the gate, a skip), the
--    requeue of runs whose message was lost, and a deleted step's skip each ask "does a SENDING
--    claim hold this run?" by `step_run_id`, which no index led with: the probe walked every
--    SENDING entry of the partial index, dead ones included, and took 200 ms a run during a
--    burst held by its limits. The partial index of SENDING claims now carries the run after
--    the sequence, so the probe (which knows both) is one index lookup, and a sequence's claims
--    are still found by its first column.
DROP INDEX send_ledger_sending;
CREATE INDEX send_ledger_sending ON send_ledger (sequence_id, step_run_id) WHERE state = 'SENDING';

-- 2. Every lookup of an enrollment's runs (its history, its thread, its next due time) is served
--    by the unique key `(enrollment_id, step_id, generation)`, which leads with the enrollment;
--    this second index cost an index insertion on each of a run's three row versions per send.
DROP INDEX step_runs_by_enrollment;
