-- The webhook events of the send, ingest and inbound paths, written by triggers in the statement
-- that makes the change (`pulse_shared::webhooks` lists every event and who writes it).
--
-- Why triggers: these changes are made by batched statements in many places (a send is marked
-- SENT by the one-statement record, by the full transaction, by an operator's resolve; an
-- enrollment ends by completion, cancel, failure, reply, suppression, delete). A row trigger
-- fires inside each of them, in its transaction, so no path can forget its event and no
-- statement has to be unbatched. Each trigger's WHEN clause is evaluated in C before any
-- PL/pgSQL runs; the function then probes `webhooks` by workspace, and builds a payload only
-- when an enabled endpoint subscribes to the event.

-- The one envelope: `event` for every enabled endpoint of `ws` subscribed to it. Returns how many.
CREATE FUNCTION pulse_webhook_emit(ws uuid, event text, data jsonb) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    n integer;
BEGIN
    INSERT INTO webhook_messages (webhook_id, workspace_id, type, payload)
    SELECT id, workspace_id, event,
           jsonb_build_object('type', event, 'timestamp', now(), 'data', data)
    FROM webhooks WHERE workspace_id = ws AND enabled AND event = ANY(events);
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $$;

-- Whether any enabled endpoint of `ws` subscribes to `event`: the probe every trigger makes
-- before it builds a payload.
CREATE FUNCTION pulse_webhook_wanted(ws uuid, event text) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM webhooks WHERE workspace_id = ws AND enabled AND event = ANY(events))
$$;

-- `send.sent`, `send.failed`, `send.unknown`: a ledger row reaching that state.
CREATE FUNCTION pulse_send_event() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    event text := 'send.' || lower(NEW.state);
BEGIN
    IF NOT pulse_webhook_wanted(NEW.workspace_id, event) THEN
        RETURN NULL;
    END IF;
    PERFORM pulse_webhook_emit(NEW.workspace_id, event, jsonb_build_object(
        'workspace_id', NEW.workspace_id,
        'sequence_id', NEW.sequence_id,
        'enrollment_id', NEW.enrollment_id,
        'step_id', NEW.step_id,
        'position', NEW.position,
        'generation', NEW.generation,
        'lead_id', NEW.lead_id,
        'email', (SELECT email FROM leads WHERE id = NEW.lead_id),
        'send_key', NEW.idempotency_key,
        'message_id', NEW.message_id,
        'outcome', NEW.state,
        'previous', CASE WHEN TG_OP = 'UPDATE' THEN OLD.state END,
        'attempts', NEW.attempts,
        'smtp_code', NEW.smtp_code,
        'smtp_reply', NEW.smtp_reply,
        'sent_at', NEW.sent_at));
    RETURN NULL;
END $$;

CREATE TRIGGER send_ledger_event_insert AFTER INSERT ON send_ledger
    FOR EACH ROW WHEN (NEW.state IN ('SENT', 'FAILED', 'UNKNOWN'))
    EXECUTE FUNCTION pulse_send_event();
CREATE TRIGGER send_ledger_event_update AFTER UPDATE OF state ON send_ledger
    FOR EACH ROW WHEN (NEW.state IN ('SENT', 'FAILED', 'UNKNOWN') AND OLD.state IS DISTINCT FROM NEW.state)
    EXECUTE FUNCTION pulse_send_event();

-- `enrollment.created` (any status: an ineligible lead is enrolled INELIGIBLE) and
-- `enrollment.ended` (ACTIVE to anything else).
CREATE FUNCTION pulse_enrollment_event() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    event text := CASE WHEN TG_OP = 'INSERT' THEN 'enrollment.created' ELSE 'enrollment.ended' END;
BEGIN
    IF NOT pulse_webhook_wanted(NEW.workspace_id, event) THEN
        RETURN NULL;
    END IF;
    PERFORM pulse_webhook_emit(NEW.workspace_id, event, jsonb_build_object(
        'workspace_id', NEW.workspace_id,
        'sequence_id', NEW.sequence_id,
        'enrollment_id', NEW.id,
        'lead_id', NEW.lead_id,
        'email', (SELECT email FROM leads WHERE id = NEW.lead_id),
        'generation', NEW.generation,
        'source', NEW.source,
        'status', NEW.status,
        'end_reason', NEW.end_reason,
        'current_step', NEW.current_step,
        'ended_at', NEW.ended_at));
    RETURN NULL;
END $$;

CREATE TRIGGER enrollments_event_insert AFTER INSERT ON enrollments
    FOR EACH ROW EXECUTE FUNCTION pulse_enrollment_event();
CREATE TRIGGER enrollments_event_update AFTER UPDATE OF status ON enrollments
    FOR EACH ROW WHEN (OLD.status = 'ACTIVE' AND NEW.status <> 'ACTIVE')
    EXECUTE FUNCTION pulse_enrollment_event();

-- `lead.replied` and `lead.bounced` (hard and soft): an inbound message matched to a workspace,
-- once processed (what it did is in `outcome`).
CREATE FUNCTION pulse_inbound_event() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    event text := CASE WHEN NEW.kind = 'reply' THEN 'lead.replied' ELSE 'lead.bounced' END;
BEGIN
    IF NOT pulse_webhook_wanted(NEW.workspace_id, event) THEN
        RETURN NULL;
    END IF;
    PERFORM pulse_webhook_emit(NEW.workspace_id, event, jsonb_build_object(
        'workspace_id', NEW.workspace_id,
        'sequence_id', NEW.sequence_id,
        'enrollment_id', NEW.enrollment_id,
        'lead_id', NEW.lead_id,
        'email', COALESCE((SELECT email FROM leads WHERE id = NEW.lead_id), NEW.address),
        'send_key', NEW.idempotency_key,
        'kind', NEW.kind,
        'source', NEW.source,
        'detail', NEW.detail,
        'outcome', NEW.outcome,
        'inbound_message', NEW.id,
        'received_at', NEW.received_at));
    RETURN NULL;
END $$;

CREATE TRIGGER inbound_messages_event AFTER UPDATE OF processed_at ON inbound_messages
    FOR EACH ROW WHEN (OLD.processed_at IS NULL AND NEW.processed_at IS NOT NULL
                       AND NEW.workspace_id IS NOT NULL
                       AND (NEW.kind IN ('bounce', 'soft_bounce')
                            OR (NEW.kind = 'reply' AND NEW.lead_id IS NOT NULL)))
    EXECUTE FUNCTION pulse_inbound_event();

-- Delivered and failed messages are kept 7 days for the delivery log, then pruned by the
-- webhooks role, oldest first.
CREATE INDEX webhook_messages_done ON webhook_messages (created_at) WHERE state <> 'PENDING';
