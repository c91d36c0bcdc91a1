-- A QUEUED step run names the scheduler that queued it. If that scheduler dies (it missed its
-- heartbeats for PULSE_OWNER_TIMEOUT_MS), the runs it queued shortly before its death, which it
-- may never have published, go back to SCHEDULED at the next sweep instead of waiting for the
-- queued lease. Nullable, no default: adding it rewrites nothing.
ALTER TABLE step_runs ADD COLUMN queued_by uuid;
