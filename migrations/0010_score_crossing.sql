-- A lead-score trigger fires when the score crosses its minimum (from below it, or from no
-- score, to it or above), not on every event while the score stays above. `level` keeps the
-- old behaviour: any event with a score at or above the minimum.
ALTER TABLE triggers ADD COLUMN score_mode text NOT NULL DEFAULT 'crossing'
    CHECK (score_mode IN ('crossing', 'level'));
