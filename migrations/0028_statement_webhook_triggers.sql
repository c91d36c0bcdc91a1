-- The webhook events of the send path written once per statement, not once per row (issue
-- "Halve the CPU each send costs"; docs/BENCHMARKS.md, "The webhook triggers per statement").
--
-- The row triggers of 0026 ran a PL/pgSQL function and a probe of `webhooks` for every send
-- marked SENT and every enrollment that ended or was created, even with no endpoint anywhere:
-- dropping them cut the one-statement record from 2.7-3.8 to 1.8-2.1 ms a call (batches of
-- about 8 sends). A statement trigger with transition tables runs once per statement: it
-- returns at once when no endpoint is enabled, and otherwise writes every event of the
-- statement in one INSERT. What it writes is what the row triggers wrote, row for row.
--
-- Transition tables are not allowed on `UPDATE OF column` triggers, so the update triggers fire
-- on every UPDATE of the table and keep the rows whose state changed as the old WHEN clauses
-- did, by joining the old and new rows on the key. An UPDATE changes no key here.
--
-- `send_ledger_event_insert` stays a row trigger: its WHEN clause (a row inserted already SENT,
-- FAILED or UNKNOWN, which no claim is) is judged in C, so it costs a claim nothing.

-- The one envelope of every event, `pulse_webhook_emit`'s and the statement triggers' below:
-- `timestamp` is when the change's transaction began.
CREATE FUNCTION pulse_webhook_envelope(event text, data jsonb) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object('type', event, 'timestamp', now(), 'data', data)
$$;

CREATE OR REPLACE FUNCTION pulse_webhook_emit(ws uuid, event text, data jsonb) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    n integer;
BEGIN
    INSERT INTO webhook_messages (webhook_id, workspace_id, type, payload)
    SELECT id, workspace_id, event, pulse_webhook_envelope(event, data)
    FROM webhooks WHERE workspace_id = ws AND enabled AND event = ANY(events);
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $$;

-- The data of a `send.*` event for ledger row `sl`, whose state was `previous` (NULL: inserted).
CREATE FUNCTION pulse_send_data(sl send_ledger, previous text) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'workspace_id', sl.workspace_id,
        'sequence_id', sl.sequence_id,
        'enrollment_id', sl.enrollment_id,
        'step_id', sl.step_id,
        'position', sl.position,
        'generation', sl.generation,
        'lead_id', sl.lead_id,
        'email', (SELECT email FROM leads WHERE id = sl.lead_id),
        'send_key', sl.idempotency_key,
        'message_id', sl.message_id,
        'outcome', sl.state,
        'previous', previous,
        'attempts', sl.attempts,
        'smtp_code', sl.smtp_code,
        'smtp_reply', sl.smtp_reply,
        'sent_at', sl.sent_at)
$$;

-- The data of an `enrollment.*` event for enrollment `e`.
CREATE FUNCTION pulse_enrollment_data(e enrollments) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'workspace_id', e.workspace_id,
        'sequence_id', e.sequence_id,
        'enrollment_id', e.id,
        'lead_id', e.lead_id,
        'email', (SELECT email FROM leads WHERE id = e.lead_id),
        'generation', e.generation,
        'source', e.source,
        'status', e.status,
        'end_reason', e.end_reason,
        'current_step', e.current_step,
        'ended_at', e.ended_at)
$$;

-- The row trigger on insert keeps its function, now built on the shared payload.
CREATE OR REPLACE FUNCTION pulse_send_event() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    event text := 'send.' || lower(NEW.state);
BEGIN
    IF NOT pulse_webhook_wanted(NEW.workspace_id, event) THEN
        RETURN NULL;
    END IF;
    PERFORM pulse_webhook_emit(NEW.workspace_id, event, pulse_send_data(NEW, NULL));
    RETURN NULL;
END $$;

-- `send.sent`, `send.failed`, `send.unknown`: ledger rows an UPDATE moved into that state.
CREATE FUNCTION pulse_send_events_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM webhooks WHERE enabled) THEN
        RETURN NULL;
    END IF;
    INSERT INTO webhook_messages (webhook_id, workspace_id, type, payload)
    SELECT w.id, w.workspace_id, 'send.' || lower(n.state),
           pulse_webhook_envelope('send.' || lower(n.state), pulse_send_data(n, o.state))
    FROM new_rows n JOIN old_rows o ON o.idempotency_key = n.idempotency_key
    JOIN webhooks w ON w.workspace_id = n.workspace_id AND w.enabled
                   AND 'send.' || lower(n.state) = ANY (w.events)
    WHERE n.state IN ('SENT', 'FAILED', 'UNKNOWN') AND o.state IS DISTINCT FROM n.state
    ORDER BY n.idempotency_key, w.id;
    RETURN NULL;
END $$;

-- `enrollment.created` (any status) and `enrollment.ended` (ACTIVE to anything else).
CREATE FUNCTION pulse_enrollment_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM webhooks WHERE enabled) THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT' THEN
        INSERT INTO webhook_messages (webhook_id, workspace_id, type, payload)
        SELECT w.id, w.workspace_id, 'enrollment.created',
               pulse_webhook_envelope('enrollment.created', pulse_enrollment_data(n))
        FROM new_rows n
        JOIN webhooks w ON w.workspace_id = n.workspace_id AND w.enabled
                       AND 'enrollment.created' = ANY (w.events)
        ORDER BY n.id, w.id;
    ELSE
        INSERT INTO webhook_messages (webhook_id, workspace_id, type, payload)
        SELECT w.id, w.workspace_id, 'enrollment.ended',
               pulse_webhook_envelope('enrollment.ended', pulse_enrollment_data(n))
        FROM new_rows n JOIN old_rows o ON o.id = n.id
        JOIN webhooks w ON w.workspace_id = n.workspace_id AND w.enabled
                       AND 'enrollment.ended' = ANY (w.events)
        WHERE o.status = 'ACTIVE' AND n.status <> 'ACTIVE'
        ORDER BY n.id, w.id;
    END IF;
    RETURN NULL;
END $$;

DROP TRIGGER send_ledger_event_update ON send_ledger;
CREATE TRIGGER send_ledger_events_update AFTER UPDATE ON send_ledger
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION pulse_send_events_updated();

DROP TRIGGER enrollments_event_insert ON enrollments;
DROP TRIGGER enrollments_event_update ON enrollments;
CREATE TRIGGER enrollments_events_insert AFTER INSERT ON enrollments
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION pulse_enrollment_events();
CREATE TRIGGER enrollments_events_update AFTER UPDATE ON enrollments
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION pulse_enrollment_events();

DROP FUNCTION pulse_enrollment_event();
