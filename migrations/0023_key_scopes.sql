-- API keys with scopes (`pulse_shared::keys`): `read` (GET only), `write` (everything but key
-- management) and `admin`. Keys provisioned before scopes existed (`PULSE_API_KEY`) are admin.
-- A revoked key is kept (its label stays in the audit trail) and opens nothing.
ALTER TABLE api_keys
    ADD COLUMN scope text NOT NULL DEFAULT 'admin' CHECK (scope IN ('read', 'write', 'admin')),
    ADD COLUMN created_by text,
    ADD COLUMN last_used_at timestamptz,
    ADD COLUMN revoked_at timestamptz;
CREATE INDEX api_keys_by_workspace ON api_keys (workspace_id, created_at);

-- A Hub session is its key's: revoking the key ends the session, and a read key's session
-- shows no actions.
ALTER TABLE hub_sessions ADD COLUMN key_id uuid REFERENCES api_keys (id);

-- Workspace-level audit events (keys, webhooks) belong to no sequence.
ALTER TABLE audit_events ALTER COLUMN sequence_id DROP NOT NULL;
CREATE INDEX audit_events_workspace ON audit_events (workspace_id, id) WHERE sequence_id IS NULL;
