-- The money: a double-entry ledger, the gift catalogue, and gifts.
--
-- Invariants the database itself enforces (the application checks them again, and
-- `livecore audit verify` checks them over the whole history):
--   * every transfer's entries sum to zero (statement-level trigger on ledger_entries);
--   * a viewer's wallet and a creator's earnings never go below zero (CHECK);
--   * the journal (transfers, entries, gifts) is append-only (triggers refuse UPDATE, DELETE
--     and TRUNCATE);
--   * a gift's creator share plus platform cut equals its price (CHECK).

CREATE TABLE ledger_accounts (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind       text NOT NULL CHECK (kind IN ('wallet', 'earnings', 'platform', 'promotions')),
    owner_id   uuid REFERENCES users (id),
    balance    bigint NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (kind, owner_id),
    -- Wallets (coins) and earnings (diamonds) belong to a user; the system accounts do not.
    CHECK ((kind IN ('wallet', 'earnings')) = (owner_id IS NOT NULL)),
    -- Users' money never goes below zero. (Promotions is where granted coins come from, so it
    -- runs negative: its balance is minus the coins ever granted.)
    CHECK (kind NOT IN ('wallet', 'earnings', 'platform') OR balance >= 0)
);
CREATE UNIQUE INDEX ledger_one_system_account ON ledger_accounts (kind) WHERE owner_id IS NULL;
INSERT INTO ledger_accounts (kind) VALUES ('platform'), ('promotions');

CREATE TABLE ledger_transfers (
    id         uuid PRIMARY KEY,
    kind       text NOT NULL CHECK (kind IN ('gift_batch', 'grant')),
    memo       text NOT NULL DEFAULT '' CHECK (length(memo) <= 500),
    actor_id   uuid REFERENCES users (id),
    created_at timestamptz NOT NULL
);

CREATE TABLE ledger_entries (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    transfer_id uuid NOT NULL REFERENCES ledger_transfers (id),
    account_id  bigint NOT NULL REFERENCES ledger_accounts (id),
    amount      bigint NOT NULL CHECK (amount <> 0),
    gift_id     uuid
);
CREATE INDEX ledger_entries_by_transfer ON ledger_entries (transfer_id);
CREATE INDEX ledger_entries_by_account ON ledger_entries (account_id, id);

-- Every statement that adds entries must leave each transfer it touches summing to zero, so a
-- transfer's entries are written in one statement.
CREATE FUNCTION ledger_check_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    unbalanced uuid;
BEGIN
    SELECT e.transfer_id INTO unbalanced
    FROM ledger_entries e
    WHERE e.transfer_id IN (SELECT DISTINCT transfer_id FROM new_entries)
    GROUP BY e.transfer_id
    HAVING sum(e.amount) <> 0
    LIMIT 1;
    IF unbalanced IS NOT NULL THEN
        RAISE EXCEPTION 'ledger transfer % does not sum to zero', unbalanced
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER ledger_entries_balanced AFTER INSERT ON ledger_entries
    REFERENCING NEW TABLE AS new_entries FOR EACH STATEMENT
    EXECUTE FUNCTION ledger_check_balanced();

CREATE FUNCTION ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE TABLE gift_types (
    slug        text PRIMARY KEY CHECK (slug ~ '^[a-z][a-z0-9_]{1,31}$'),
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 40),
    price_coins integer NOT NULL CHECK (price_coins BETWEEN 1 AND 100000),
    streakable  boolean NOT NULL,
    animation   text NOT NULL,
    is_active   boolean NOT NULL DEFAULT true,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- A creator's own platform cut, where an admin agreed one (basis points).
CREATE TABLE creator_terms (
    creator_id      uuid PRIMARY KEY REFERENCES users (id),
    platform_cut_bp integer NOT NULL CHECK (platform_cut_bp BETWEEN 0 AND 10000),
    updated_by      uuid REFERENCES users (id),
    updated_at      timestamptz NOT NULL
);

CREATE TABLE gifts (
    id            uuid PRIMARY KEY,  -- chosen by the client; retries reuse it
    sender_id     uuid NOT NULL REFERENCES users (id),
    stream_id     uuid NOT NULL REFERENCES streams (id),
    creator_id    uuid NOT NULL REFERENCES users (id),
    gift_slug     text NOT NULL REFERENCES gift_types (slug),
    quantity      integer NOT NULL CHECK (quantity BETWEEN 1 AND 99),
    price         bigint NOT NULL CHECK (price > 0),
    creator_share bigint NOT NULL CHECK (creator_share >= 0),
    platform_cut  bigint NOT NULL CHECK (platform_cut >= 0),
    transfer_id   uuid NOT NULL REFERENCES ledger_transfers (id) DEFERRABLE INITIALLY DEFERRED,
    created_at    timestamptz NOT NULL,
    CHECK (creator_share + platform_cut = price)
);
CREATE INDEX gifts_by_stream ON gifts (stream_id, created_at);
CREATE INDEX gifts_by_creator ON gifts (creator_id, created_at);
CREATE INDEX gifts_by_sender ON gifts (sender_id, created_at);

CREATE TRIGGER ledger_transfers_append_only BEFORE UPDATE OR DELETE ON ledger_transfers
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();
CREATE TRIGGER ledger_entries_append_only BEFORE UPDATE OR DELETE ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();
CREATE TRIGGER gifts_append_only BEFORE UPDATE OR DELETE ON gifts
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();
CREATE TRIGGER ledger_transfers_no_truncate BEFORE TRUNCATE ON ledger_transfers
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_append_only();
CREATE TRIGGER ledger_entries_no_truncate BEFORE TRUNCATE ON ledger_entries
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_append_only();
CREATE TRIGGER gifts_no_truncate BEFORE TRUNCATE ON gifts
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_append_only();
