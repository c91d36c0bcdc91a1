-- Per-workspace settings. `allow_dotless_domains`: accept lead addresses whose domain has no
-- dot (`ops@mailhub`), for workspaces that send through an internal relay. Off by default:
-- everywhere else such an address is a mistake.
ALTER TABLE workspaces ADD COLUMN allow_dotless_domains boolean NOT NULL DEFAULT false;
