-- The message as a sales team sends it. A step may carry an HTML part (`html`, a template like
-- `body`) and may be sent as a reply in the lead's thread (`thread`). A sequence may name a
-- Reply-To address. What the scheduler freezes when it queues a run grows to match: the rendered
-- HTML part, the Reply-To, and for a threaded step the In-Reply-To and References it answers
-- (the Message-IDs of the enrollment's earlier sends, space-separated, oldest first).
-- Nullable columns and a constant default: adding them rewrites nothing.
ALTER TABLE sequences ADD COLUMN sender_reply_to text;
ALTER TABLE sequence_steps ADD COLUMN html text,
                           ADD COLUMN thread boolean NOT NULL DEFAULT false;
ALTER TABLE step_runs ADD COLUMN html text,
                      ADD COLUMN reply_to text,
                      ADD COLUMN in_reply_to text,
                      ADD COLUMN thread_refs text;
