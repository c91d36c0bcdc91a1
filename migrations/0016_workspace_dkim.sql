-- A workspace-wide DKIM key, for mail whose From is in `dkim_domain` and whose mailbox (if any)
-- has no key of its own. The private key is write-only. `dkim_updated_at` lets a sender keep the
-- parsed key until it changes.
ALTER TABLE workspaces ADD COLUMN dkim_domain text,
                       ADD COLUMN dkim_selector text,
                       ADD COLUMN dkim_private_key text,
                       ADD COLUMN dkim_updated_at timestamptz,
                       ADD CONSTRAINT workspaces_dkim CHECK (
                           (dkim_domain IS NULL) = (dkim_selector IS NULL)
                           AND (dkim_selector IS NULL) = (dkim_private_key IS NULL));
