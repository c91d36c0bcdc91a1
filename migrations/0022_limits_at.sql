-- When a scope's sending limits last changed (`guardrails::overspeed` counts sends only from
-- then on, so tightening a limit never trips on what the looser one allowed). Kept by triggers
-- that fire only when the limit columns are in an UPDATE's SET list.
ALTER TABLE sequences ADD COLUMN limits_at timestamptz NOT NULL DEFAULT now();
ALTER TABLE mailboxes ADD COLUMN limits_at timestamptz NOT NULL DEFAULT now();
ALTER TABLE workspaces ADD COLUMN limits_at timestamptz NOT NULL DEFAULT now();

CREATE FUNCTION pulse_limits_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.limits IS DISTINCT FROM OLD.limits THEN
        NEW.limits_at := now();
    END IF;
    RETURN NEW;
END $$;

CREATE FUNCTION pulse_sequence_limits_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.limits IS DISTINCT FROM OLD.limits
       OR NEW.max_sends_per_minute IS DISTINCT FROM OLD.max_sends_per_minute THEN
        NEW.limits_at := now();
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER sequences_limits_at BEFORE UPDATE OF limits, max_sends_per_minute ON sequences
    FOR EACH ROW EXECUTE FUNCTION pulse_sequence_limits_at();
CREATE TRIGGER mailboxes_limits_at BEFORE UPDATE OF limits ON mailboxes
    FOR EACH ROW EXECUTE FUNCTION pulse_limits_at();
CREATE TRIGGER workspaces_limits_at BEFORE UPDATE OF limits ON workspaces
    FOR EACH ROW EXECUTE FUNCTION pulse_limits_at();
