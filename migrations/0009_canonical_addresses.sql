-- One person, one lead: `leads.email` holds the canonical address (local part in Unicode NFC,
-- ASCII letters lower-cased; domain as lower-case IDNA ASCII), which the unique index on
-- (workspace_id, email) makes the lead's identity. `email_given` keeps the address as the caller
-- first gave it. Rows from before this migration were stored lower-cased; that is all that is
-- known of how they were given. Their canonical form is completed by `pulse migrate` (the IDNA
-- step needs code PostgreSQL does not have; see `db::canonicalize_leads`).
ALTER TABLE leads ADD COLUMN email_given text;
UPDATE leads SET email_given = email;
ALTER TABLE leads ALTER COLUMN email_given SET NOT NULL;
