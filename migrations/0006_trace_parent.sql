-- The W3C trace context of the request that created a step run (a trigger, an enrollment, a
-- re-enrollment), so the scheduler's publish and the sender's send continue that trace.
-- NULL when traces are not exported, and for runs a send created (the next step starts its
-- own trace when it is published).
ALTER TABLE step_runs ADD COLUMN trace_parent text;
