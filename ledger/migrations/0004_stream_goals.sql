-- Live goals: a creator's target of coins for one stream.
--
-- Progress is not stored: it is the coins of the stream's gifts committed at or after
-- `set_at` (gifts.created_at >= set_at), which the Redis projection counts as gifts arrive and
-- rebuilds from this table and `gifts`. Setting a new goal replaces the row (and restarts the
-- count); removing the goal deletes it.

CREATE TABLE stream_goals (
    stream_id    uuid PRIMARY KEY REFERENCES streams (id) ON DELETE CASCADE,
    target_coins bigint NOT NULL CHECK (target_coins BETWEEN 1 AND 100000000),
    title        text NOT NULL DEFAULT '' CHECK (length(title) <= 60),
    set_by       uuid NOT NULL REFERENCES users (id),
    set_at       timestamptz NOT NULL
);
