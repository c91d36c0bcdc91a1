-- The sweeper finds step runs whose queued message was never handled.
CREATE INDEX step_runs_queued ON step_runs (queued_at) WHERE state = 'QUEUED';
