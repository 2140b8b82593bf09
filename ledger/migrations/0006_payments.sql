-- Money in and out: coin packages, purchases (Stripe), refunds and disputes, the debt
-- account, spending limits, creator payouts. See docs/payments.md.
--
-- New accounts:
--   * sales (system): where bought coins come from; its balance is minus the coins sold, net
--     of reversals;
--   * debt (one per viewer): what a refund or a lost dispute took back after the coins were
--     spent; never above zero (minus it is what the viewer owes);
--   * payouts_pending, payouts_paid (system): diamonds reserved for payouts in flight, and
--     diamonds paid out.

ALTER TABLE ledger_accounts DROP CONSTRAINT ledger_accounts_kind_check;
ALTER TABLE ledger_accounts ADD CONSTRAINT ledger_accounts_kind_check CHECK (
    kind IN ('wallet', 'earnings', 'platform', 'promotions', 'sales', 'debt',
             'payouts_pending', 'payouts_paid'));
ALTER TABLE ledger_accounts DROP CONSTRAINT ledger_accounts_check;
ALTER TABLE ledger_accounts ADD CONSTRAINT ledger_accounts_owner_check
    CHECK ((kind IN ('wallet', 'earnings', 'debt')) = (owner_id IS NOT NULL));
ALTER TABLE ledger_accounts ADD CONSTRAINT ledger_accounts_payouts_check
    CHECK (kind NOT IN ('payouts_pending', 'payouts_paid') OR balance >= 0);
ALTER TABLE ledger_accounts ADD CONSTRAINT ledger_accounts_debt_check
    CHECK (kind <> 'debt' OR balance <= 0);
INSERT INTO ledger_accounts (kind) VALUES ('sales'), ('payouts_pending'), ('payouts_paid');

ALTER TABLE ledger_transfers DROP CONSTRAINT ledger_transfers_kind_check;
ALTER TABLE ledger_transfers ADD CONSTRAINT ledger_transfers_kind_check CHECK (
    kind IN ('gift_batch', 'grant', 'purchase', 'reversal', 'reinstatement',
             'debt_settlement', 'payout_reserve', 'payout_post', 'payout_void'));
-- What a money-in or money-out transfer is about (NULL for gifts and grants).
ALTER TABLE ledger_transfers ADD COLUMN purchase_id uuid;
ALTER TABLE ledger_transfers ADD COLUMN payout_id uuid;
CREATE INDEX ledger_transfers_by_purchase ON ledger_transfers (purchase_id)
    WHERE purchase_id IS NOT NULL;
CREATE INDEX ledger_transfers_by_payout ON ledger_transfers (payout_id)
    WHERE payout_id IS NOT NULL;
-- A purchase is credited at most once: its credit transfer's id is the purchase id, and only
-- one purchase transfer may name it.
CREATE UNIQUE INDEX ledger_one_credit_per_purchase ON ledger_transfers (purchase_id)
    WHERE kind = 'purchase';
CREATE UNIQUE INDEX ledger_one_reserve_per_payout ON ledger_transfers (payout_id)
    WHERE kind = 'payout_reserve';
CREATE UNIQUE INDEX ledger_one_outcome_per_payout ON ledger_transfers (payout_id)
    WHERE kind IN ('payout_post', 'payout_void');

CREATE TABLE coin_packages (
    slug        text PRIMARY KEY CHECK (slug ~ '^[a-z0-9][a-z0-9_-]{1,31}$'),
    coins       integer NOT NULL CHECK (coins BETWEEN 1 AND 10000000),
    price_minor integer NOT NULL CHECK (price_minor BETWEEN 50 AND 100000000),
    currency    text NOT NULL CHECK (currency ~ '^[a-z]{3}$'),
    is_active   boolean NOT NULL DEFAULT true,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO coin_packages (slug, coins, price_minor, currency) VALUES
    ('coins-70', 70, 99, 'usd'),
    ('coins-350', 350, 499, 'usd'),
    ('coins-700', 700, 999, 'usd'),
    ('coins-1400', 1400, 1999, 'usd'),
    ('coins-3500', 3500, 4999, 'usd');

CREATE TABLE purchases (
    id                uuid PRIMARY KEY,  -- chosen by the client; a retry reuses it
    user_id           uuid NOT NULL REFERENCES users (id),
    package_slug      text NOT NULL REFERENCES coin_packages (slug),
    coins             integer NOT NULL CHECK (coins > 0),
    amount_minor      integer NOT NULL CHECK (amount_minor > 0),
    currency          text NOT NULL,
    method            text NOT NULL CHECK (method IN ('payment_intent', 'checkout')),
    provider          text NOT NULL CHECK (provider IN ('stripe', 'test')),
    status            text NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('pending', 'paid', 'failed')),
    -- The provider's objects: the PaymentIntent (known at once for method payment_intent,
    -- from the completed session for checkout) and the Checkout Session.
    payment_intent_id text UNIQUE,
    checkout_id       text UNIQUE,
    client_secret     text,
    checkout_url      text,
    -- What the provider has taken back: refunded money (cumulative, from charge.refunded),
    -- and the latest dispute. The coins reversed follow from these (livecore/payments.py).
    refunded_minor    integer NOT NULL DEFAULT 0 CHECK (refunded_minor >= 0),
    dispute_id        text,
    dispute_status    text CHECK (dispute_status IN ('open', 'won', 'lost')),
    dispute_minor     integer NOT NULL DEFAULT 0 CHECK (dispute_minor >= 0),
    coins_reversed    integer NOT NULL DEFAULT 0 CHECK (coins_reversed BETWEEN 0 AND coins),
    failure           text,
    created_at        timestamptz NOT NULL,
    paid_at           timestamptz,
    updated_at        timestamptz NOT NULL,
    CHECK ((status = 'paid') = (paid_at IS NOT NULL))
);
CREATE INDEX purchases_by_user ON purchases (user_id, created_at DESC);
CREATE INDEX purchases_by_created ON purchases (created_at DESC, id DESC);

-- Every webhook event, stored once (its id) in the transaction that applied it.
CREATE TABLE provider_events (
    id          text PRIMARY KEY,
    type        text NOT NULL,
    purchase_id uuid,
    -- An event about a payment not yet linked to a purchase (a refund of a Checkout payment
    -- that came before the session's completion, say) waits here for it.
    payment_intent_id text,
    payload     jsonb NOT NULL,
    received_at timestamptz NOT NULL
);
CREATE INDEX provider_events_by_purchase ON provider_events (purchase_id, received_at)
    WHERE purchase_id IS NOT NULL;
CREATE INDEX provider_events_unmatched ON provider_events (payment_intent_id)
    WHERE purchase_id IS NULL;

-- A viewer's own daily spending cap (minor units), lower than the platform's. Lowering applies
-- at once; a raise (or removal) waits in raise_to / raise_at for 24 hours.
CREATE TABLE spending_limits (
    user_id        uuid PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    own_cap_minor  integer CHECK (own_cap_minor >= 0),
    raise_pending  boolean NOT NULL DEFAULT false,
    raise_to_minor integer CHECK (raise_to_minor >= 0),
    raise_at       timestamptz,
    updated_at     timestamptz NOT NULL,
    CHECK (raise_pending = (raise_at IS NOT NULL))
);

CREATE TABLE payout_accounts (
    creator_id        uuid PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    stripe_account_id text NOT NULL CHECK (stripe_account_id ~ '^acct_[A-Za-z0-9]{1,64}$'),
    updated_at        timestamptz NOT NULL
);

CREATE TABLE payouts (
    id           uuid PRIMARY KEY,  -- chosen by the client; also the provider idempotency key
    creator_id   uuid NOT NULL REFERENCES users (id),
    diamonds     bigint NOT NULL CHECK (diamonds > 0),
    amount_minor bigint NOT NULL CHECK (amount_minor > 0),
    currency     text NOT NULL,
    destination  text NOT NULL,
    provider     text NOT NULL CHECK (provider IN ('stripe', 'test')),
    status       text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'paid', 'failed')),
    transfer_id  text,
    failure      text,
    attempts     integer NOT NULL DEFAULT 0,
    created_at   timestamptz NOT NULL,
    attempted_at timestamptz,
    resolved_at  timestamptz,
    CHECK ((status = 'pending') = (resolved_at IS NULL)),
    CHECK (status <> 'paid' OR transfer_id IS NOT NULL)
);
CREATE INDEX payouts_by_creator ON payouts (creator_id, created_at DESC);
CREATE INDEX payouts_pending ON payouts (created_at) WHERE status = 'pending';
CREATE INDEX payouts_by_created ON payouts (created_at DESC, id DESC);
