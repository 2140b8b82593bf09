-- Accounts, login tokens and streams.
-- Ids are UUIDs chosen by the application; timestamps are timestamptz in UTC.

CREATE TABLE users (
    id            uuid PRIMARY KEY,
    username      text NOT NULL UNIQUE
                  CHECK (username = lower(username) AND length(username) BETWEEN 3 AND 32),
    password_hash text NOT NULL,
    birthdate     date NOT NULL,
    -- Every account is a viewer; the other roles add to it.
    roles         text[] NOT NULL DEFAULT ARRAY['viewer']
                  CHECK (roles <@ ARRAY['viewer', 'creator', 'moderator', 'finance', 'admin']
                         AND 'viewer' = ANY (roles)),
    created_at    timestamptz NOT NULL
);

-- Bearer tokens are stored as SHA-256 digests: a copy of this table logs nobody in.
CREATE TABLE auth_tokens (
    id          uuid PRIMARY KEY,
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_hash  bytea NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    created_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL CHECK (expires_at > created_at),
    revoked_at  timestamptz
);
CREATE INDEX auth_tokens_by_user ON auth_tokens (user_id, created_at DESC);

CREATE TABLE streams (
    id          uuid PRIMARY KEY,
    creator_id  uuid NOT NULL REFERENCES users (id),
    title       text NOT NULL CHECK (length(title) BETWEEN 1 AND 140),
    description text NOT NULL DEFAULT '' CHECK (length(description) <= 2000),
    state       text NOT NULL DEFAULT 'created' CHECK (state IN ('created', 'live', 'ended')),
    stream_key  text NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL,
    started_at  timestamptz,
    ended_at    timestamptz,
    CHECK (state <> 'live' OR started_at IS NOT NULL),
    CHECK ((state = 'ended') = (ended_at IS NOT NULL))
);
-- One broadcast at a time: a creator holds at most one stream that has not ended.
CREATE UNIQUE INDEX streams_one_open_per_creator ON streams (creator_id) WHERE state <> 'ended';
CREATE INDEX streams_live ON streams (started_at DESC, id DESC) WHERE state = 'live';
CREATE INDEX streams_by_creator ON streams (creator_id, created_at DESC);
CREATE INDEX streams_by_state ON streams (state, created_at DESC, id DESC);

-- Who changed whose roles, and when: admins are accountable too.
CREATE TABLE role_changes (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    actor_id    uuid REFERENCES users (id),
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    old_roles   text[] NOT NULL,
    new_roles   text[] NOT NULL,
    reason      text NOT NULL,
    changed_at  timestamptz NOT NULL
);
