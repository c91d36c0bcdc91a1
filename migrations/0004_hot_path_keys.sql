-- The send path inserts a ledger row and a step run for every email. A foreign key check
-- share-locks the referenced row, and the workspace, sequence and step rows are referenced by
-- every one of those inserts: concurrent senders then pile shared locks (multixacts) onto the
-- same few rows. Those references are kept by the rows they hang from instead (a step run
-- belongs to its enrollment; a ledger row to its step run), and workspaces, sequences and steps
-- are never deleted (sequences and steps are soft-deleted), so the checks bought nothing.
ALTER TABLE step_runs
    DROP CONSTRAINT step_runs_workspace_id_fkey,
    DROP CONSTRAINT step_runs_sequence_id_fkey,
    DROP CONSTRAINT step_runs_step_id_fkey;
ALTER TABLE send_ledger
    DROP CONSTRAINT send_ledger_workspace_id_fkey,
    DROP CONSTRAINT send_ledger_sequence_id_fkey,
    DROP CONSTRAINT send_ledger_step_id_fkey,
    DROP CONSTRAINT send_ledger_enrollment_id_fkey,
    DROP CONSTRAINT send_ledger_lead_id_fkey;
