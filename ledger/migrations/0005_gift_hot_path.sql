-- The gift hot path: fewer per-row checks and less index upkeep per gift (measured in
-- docs/performance.md, "Gift ledger").
--
-- Three foreign keys of `gifts` are implied by other rows the database already checks, so each
-- gift no longer pays for them; `livecore audit verify` (ledger/audit.py) checks what they
-- guaranteed, over the whole history:
--   * sender_id -> users: the gift's debit entry is on its sender's wallet, and a wallet's
--     owner is a user (ledger_accounts' foreign key). Audit: gifts_debit_sender_wallet.
--   * creator_id -> users: the gift's creator is its stream's creator, a user (streams'
--     foreign key). Audit: gifts_creator_is_streams.
--   * transfer_id -> ledger_transfers: the gift's debit entry names the same transfer, and
--     an entry's transfer exists (checked by the zero-sum trigger, below). Audit:
--     entries_name_real_gifts and gifts_applied_once (exactly one debit per gift).
-- The other two (stream_id, gift_slug) are implied by nothing else and stay.
--
-- `gifts_by_sender` is read by no query (the finance journal finds a sender's gifts through
-- the wallet's entries, ledger_entries_by_account); every gift paid to maintain it.
--
-- An entry's transfer: the transfers are append-only (no UPDATE, DELETE or TRUNCATE), so a
-- transfer that exists once an entry is written exists for good, and the per-row foreign key
-- (a lookup and a row lock for each entry, all of a batch's on the same transfer) is replaced
-- by one check per statement in the zero-sum trigger, over the statement's distinct transfers.
-- Still enforced by the database, with the same error code (foreign_key_violation).

ALTER TABLE gifts DROP CONSTRAINT gifts_sender_id_fkey;
ALTER TABLE gifts DROP CONSTRAINT gifts_creator_id_fkey;
ALTER TABLE gifts DROP CONSTRAINT gifts_transfer_id_fkey;
DROP INDEX gifts_by_sender;
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_transfer_id_fkey;

CREATE OR REPLACE FUNCTION ledger_check_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    missing uuid;
    unbalanced uuid;
BEGIN
    SELECT n.transfer_id INTO missing
    FROM (SELECT DISTINCT transfer_id FROM new_entries) n
    WHERE NOT EXISTS (SELECT 1 FROM ledger_transfers t WHERE t.id = n.transfer_id)
    LIMIT 1;
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'ledger entries name transfer %, which does not exist', missing
            USING ERRCODE = 'foreign_key_violation';
    END IF;
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
