-- Chat moderation: per-stream settings, per-creator sanctions, and an audit trail.

CREATE TABLE chat_settings (
    stream_id     uuid PRIMARY KEY REFERENCES streams (id) ON DELETE CASCADE,
    slow_mode_s   integer NOT NULL DEFAULT 0 CHECK (slow_mode_s BETWEEN 0 AND 3600),
    blocked_words text[] NOT NULL DEFAULT '{}' CHECK (cardinality(blocked_words) <= 500),
    updated_by    uuid NOT NULL REFERENCES users (id),
    updated_at    timestamptz NOT NULL
);

-- A mute or ban holds in every stream of the creator's channel, until it expires or is lifted.
CREATE TABLE chat_sanctions (
    creator_id  uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind        text NOT NULL CHECK (kind IN ('mute', 'ban')),
    expires_at  timestamptz,
    reason      text NOT NULL DEFAULT '' CHECK (length(reason) <= 500),
    created_by  uuid NOT NULL REFERENCES users (id),
    created_at  timestamptz NOT NULL,
    PRIMARY KEY (creator_id, user_id),
    CHECK (expires_at IS NULL OR expires_at > created_at),
    CHECK (user_id <> creator_id)
);

CREATE TABLE chat_moderation_log (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stream_id      uuid NOT NULL REFERENCES streams (id) ON DELETE CASCADE,
    actor_id       uuid NOT NULL REFERENCES users (id),
    action         text NOT NULL
                   CHECK (action IN ('remove_message', 'mute', 'ban', 'lift', 'settings')),
    target_user_id uuid REFERENCES users (id),
    message_id     uuid,
    details        jsonb NOT NULL DEFAULT '{}',
    at             timestamptz NOT NULL
);
CREATE INDEX chat_moderation_log_by_stream ON chat_moderation_log (stream_id, at DESC);
