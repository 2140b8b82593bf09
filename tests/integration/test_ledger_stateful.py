"""Hypothesis drives the real ledger (real PostgreSQL, real Redis) through the gateway's gift
service, the same code the HTTP API and the websocket call, and a pure model side by side.

Rules: grants; gifts, their retries with the same id and the same id for another gift,
bursts of gifts at once (duplicates included); streams that end and new ones; gift types
repriced, withdrawn and offered again; coin purchases paid through the event the
test-payments mode builds, then refunded and disputed (opened, won, lost) through
``Purchases.handle_event``; debt settled; creator payouts and their retries; Redis losing a
stream's projection. After every step each wallet, debt and earnings balance equals the
model's, each gift is in the ledger once, no wallet is below zero and Redis's stream totals
equal the model's; after each example its transfers balance and its accounts equal their
entries, and after the run every audit check passes.
A retry's answer equals the first answer, whatever changed between them.

The number of examples and steps are settings (docs/ledger.md, "The ledger's state
machine"): ``LIVECORE_LEDGER_EXAMPLES`` (default :data:`EXAMPLES`) and
``LIVECORE_LEDGER_STEPS`` (default :data:`STEPS`); a soak run raises them.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)

from gateway.gifts import GiftRequest
from gateway.services import Services
from ledger.audit import verify_postgres
from ledger.batcher import GiftOutcome, grant
from ledger.payouts import Payout
from livecore.accounts import Account, normalise_roles
from livecore.economy import GiftType, split
from livecore.errors import ClientError
from livecore.ids import StreamId, UserId
from livecore.payments import DISPUTE_RANK, coins_to_reverse
from livecore.settings import Secret, Settings
from livecore.streams import StreamEvent
from tests.support import own_database

#: Examples and steps per example in the suite (CI); a soak run sets the variables higher.
EXAMPLES = int(os.environ.get("LIVECORE_LEDGER_EXAMPLES", "200"))
STEPS = int(os.environ.get("LIVECORE_LEDGER_STEPS", "10"))
CUT_BP = 5000
MIN_PAYOUT_DIAMONDS = 2
START_COINS = 100
PACKAGES = {"coins-70": (70, 99), "coins-350": (350, 499)}
#: The machine's gift types: slug -> (price at the start of each example, streakable).
GIFT_TYPES = {"modelrose": (1, True), "modelkite": (7, False)}


@dataclass
class SentGift:
    """A gift the ledger took, and the answer its sender got."""

    request: GiftRequest
    sender: int
    outcome: GiftOutcome


@dataclass
class Bought:
    """A paid purchase, as the model sees it."""

    id: uuid.UUID
    user: int
    coins: int
    amount_minor: int
    payment_intent_id: str
    refunded_minor: int = 0
    dispute_status: str | None = None
    dispute_minor: int = 0
    reversed: int = 0


@dataclass
class Model:
    wallet: list[int]
    debt: list[int]
    earnings: list[int]
    #: stream -> (creator index, is live, coins received)
    streams: dict[uuid.UUID, list[Any]] = field(default_factory=dict)
    #: gift type slug -> (price, is offered)
    types: dict[str, tuple[int, bool]] = field(default_factory=dict)
    gifts: int = 0


def _error(exc: BaseException) -> str:
    assert isinstance(exc, ClientError), repr(exc)
    return exc.code


def make_machine(loop: asyncio.AbstractEventLoop,
                 services: Services) -> type[RuleBasedStateMachine]:
    gifts_service = services.gifts

    def run(coroutine: Any) -> Any:
        return loop.run_until_complete(coroutine)

    class LedgerMachine(RuleBasedStateMachine):
        gifts = Bundle("gifts")
        purchases = Bundle("purchases")
        payouts = Bundle("payouts")

        def __init__(self) -> None:
            super().__init__()
            self.senders: list[Account] = []
            self.creators: list[Account] = []
            self.model = Model(wallet=[0, 0, 0], debt=[0, 0, 0], earnings=[0, 0])
            self.slugs: list[str] = []
            run(self._setup())

        async def _setup(self) -> None:
            pool = services.pool
            senders = [uuid.uuid4() for _ in range(3)]
            creators = [uuid.uuid4() for _ in range(2)]
            users = [(u, f"s{u.hex[:16]}", ["viewer"]) for u in senders]
            users += [(u, f"c{u.hex[:16]}", ["viewer", "creator"]) for u in creators]
            rows = await pool.fetch(
                "INSERT INTO users (id, username, password_hash, birthdate, roles, created_at)"
                " SELECT u.id, u.name, 'x', '1990-01-01', u.roles::text[], now()"
                " FROM unnest($1::uuid[], $2::text[], $3::text[]) AS u(id, name, roles)"
                " RETURNING id, username, roles, birthdate, created_at",
                [u[0] for u in users], [u[1] for u in users],
                ["{" + ",".join(u[2]) + "}" for u in users])
            accounts = {row["id"]: Account(UserId(row["id"]), row["username"],
                                           normalise_roles(row["roles"]), row["birthdate"],
                                           row["created_at"]) for row in rows}
            self.senders = [accounts[u] for u in senders]
            self.creators = [accounts[u] for u in creators]
            await pool.executemany(
                "INSERT INTO payout_accounts (creator_id, stripe_account_id, updated_at)"
                " VALUES ($1, 'acct_1Model', now())", [(c,) for c in creators])
            for creator in range(2):
                await self._new_stream(creator)
            # Coins to start with, so that the first steps can already send gifts.
            for sender in range(3):
                await grant(pool, grant_id=uuid.uuid4(), user_id=senders[sender],
                            coins=START_COINS, memo="", actor_id=None, now=services.clock())
                self._give(sender, START_COINS)
            # The machine's two gift types, as each example starts them (the examples before
            # repriced or withdrew them).
            await pool.executemany(
                "INSERT INTO gift_types (slug, name, price_coins, streakable, animation)"
                " VALUES ($1, 'Model gift', $2, $3, 'none') ON CONFLICT (slug) DO UPDATE"
                " SET price_coins = EXCLUDED.price_coins, is_active = true",
                [(slug, price, streakable) for slug, (price, streakable) in GIFT_TYPES.items()])
            await gifts_service.catalogue(fresh=True)
            self.slugs = list(GIFT_TYPES)
            self.model.types = {slug: (price, True) for slug, (price, _) in GIFT_TYPES.items()}

        async def _new_stream(self, creator: int) -> None:
            stream = uuid.uuid4()
            await services.pool.execute(
                "INSERT INTO streams (id, creator_id, title, stream_key, created_at, state,"
                " started_at) VALUES ($1, $2, 't', $3, now(), 'live', now())",
                stream, self.creators[creator].id, uuid.uuid4().hex)
            self.model.streams[stream] = [creator, True, 0]

        def teardown(self) -> None:
            """The example's transfers balance, and its accounts equal their entries (the
            whole audit, over every example, runs once at the end: run over the growing
            database after each example, it would cost more than the examples)."""
            owners = [a.id for a in [*self.senders, *self.creators]]
            unbalanced = run(services.pool.fetch(
                """
                WITH mine AS (SELECT id FROM ledger_accounts WHERE owner_id = ANY($1::uuid[]))
                SELECT 'transfer' AS what, transfer_id::text AS id FROM ledger_entries
                WHERE transfer_id IN (SELECT transfer_id FROM ledger_entries
                                      WHERE account_id IN (SELECT id FROM mine))
                GROUP BY transfer_id HAVING sum(amount) <> 0
                UNION ALL
                SELECT 'account', a.id::text FROM ledger_accounts a JOIN mine USING (id)
                WHERE a.balance <> (SELECT coalesce(sum(amount), 0) FROM ledger_entries
                                    WHERE account_id = a.id)
                """, owners))
            assert [tuple(row) for row in unbalanced] == []

        # -- the model -------------------------------------------------------------------------

        def _expected(self, sender: int, request: GiftRequest) -> str | None:
            """The refusal the model expects for a new gift, or None if it is taken."""
            price, offered = self.model.types[request.slug]
            creator, live, _ = self.model.streams[request.stream_id]
            if not offered:
                return "gift_unavailable"
            if not live:
                return "stream_not_live"
            if self.model.debt[sender]:
                return "wallet_in_debt"
            if self.model.wallet[sender] < price * request.quantity:
                return "insufficient_coins"
            return None

        def _take(self, sender: int, request: GiftRequest, outcome: GiftOutcome) -> None:
            price, _ = self.model.types[request.slug]
            coins = price * request.quantity
            assert outcome.is_new and outcome.order.price == coins
            stream = self.model.streams[request.stream_id]
            self.model.wallet[sender] -= coins
            self.model.earnings[stream[0]] += split(coins, CUT_BP).creator_share
            stream[2] += coins
            self.model.gifts += 1

        def _give(self, user: int, coins: int) -> None:
            """Coins in: what the user owes is paid first."""
            to_debt = min(coins, self.model.debt[user])
            self.model.debt[user] -= to_debt
            self.model.wallet[user] += coins - to_debt

        def _reverse_to(self, bought: Bought) -> None:
            target = coins_to_reverse(coins=bought.coins, amount_minor=bought.amount_minor,
                                      refunded_minor=bought.refunded_minor,
                                      dispute_status=bought.dispute_status,
                                      dispute_minor=bought.dispute_minor)
            delta = target - bought.reversed
            if delta > 0:
                from_wallet = min(delta, self.model.wallet[bought.user])
                self.model.wallet[bought.user] -= from_wallet
                self.model.debt[bought.user] += delta - from_wallet
            elif delta < 0:
                self._give(bought.user, -delta)
            bought.reversed = target

        async def _send(self, sender: int, request: GiftRequest) -> GiftOutcome | str:
            try:
                outcome, _ = await gifts_service.send(self.senders[sender], request)
            except ClientError as exc:
                return exc.code
            return outcome

        def _stream(self, index: int) -> uuid.UUID:
            streams = list(self.model.streams)
            return streams[index % len(streams)]

        # -- gifts ----------------------------------------------------------------------------

        @rule(sender=st.integers(0, 2), coins=st.integers(1, 300))
        def grant_coins(self, sender: int, coins: int) -> None:
            applied = run(grant(services.pool, grant_id=uuid.uuid4(),
                                user_id=self.senders[sender].id, coins=coins, memo="",
                                actor_id=None, now=services.clock()))
            assert applied
            self.model.wallet[sender] += coins  # promotional coins pay no debt (a purchase does)

        @rule(target=gifts, sender=st.integers(0, 2), stream=st.integers(0, 7),
              kind=st.integers(0, 1), quantity=st.integers(1, 5))
        def send_gift(self, sender: int, stream: int, kind: int, quantity: int) -> Any:
            request = GiftRequest(uuid.uuid4(), StreamId(self._stream(stream)),
                                  self.slugs[kind], quantity)
            expected = self._expected(sender, request)
            result = run(self._send(sender, request))
            if expected is not None:
                assert result == expected
                return multiple()
            assert isinstance(result, GiftOutcome), result
            self._take(sender, request, result)
            return SentGift(request, sender, result)

        @rule(gift=gifts)
        def retry_a_gift(self, gift: SentGift) -> None:
            """Whatever changed since (the gift repriced or withdrawn, the stream ended, the
            coins spent), the retry is answered as the gift was."""
            result = run(self._send(gift.sender, gift.request))
            assert isinstance(result, GiftOutcome), result
            assert not result.is_new
            assert (result.order, result.created_at) == (gift.outcome.order,
                                                         gift.outcome.created_at)

        @rule(gift=consumes(gifts), quantity=st.integers(1, 5))
        def reuse_a_gift_id_for_another_gift(self, gift: SentGift, quantity: int) -> None:
            other = GiftRequest(gift.request.gift_id, gift.request.stream_id,
                                gift.request.slug, quantity % 5 + 1
                                if quantity == gift.request.quantity else quantity)
            assert run(self._send(gift.sender, other)) == "gift_id_conflict"

        @rule(burst=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 7),
                                       st.integers(0, 1), st.integers(1, 5)),
                             min_size=2, max_size=6),
              duplicates=st.integers(0, 2))
        def concurrent_burst(self, burst: list[tuple[int, int, int, int]],
                             duplicates: int) -> None:
            """Gifts at once, the first of them sent ``duplicates`` more times with its id:
            each is taken or refused as the model says (funds are taken in arrival order,
            which the burst does not fix: a gift refused for want of coins is one its
            sender could not afford after the others), and the duplicates are answered as
            one gift."""
            sends = [(s, GiftRequest(uuid.uuid4(), StreamId(self._stream(t)),
                                     self.slugs[k], q)) for s, t, k, q in burst]
            sends += [sends[0]] * duplicates

            async def all_at_once() -> list[GiftOutcome | str]:
                return list(await asyncio.gather(*(self._send(s, r) for s, r in sends)))

            before = list(self.model.wallet)
            results = run(all_at_once())
            first = [r for (_, req), r in zip(sends, results, strict=True)
                     if req.gift_id == sends[0][1].gift_id]
            stored = [r for r in first if isinstance(r, GiftOutcome)]
            if stored:  # every duplicate got the one stored answer, one of them new
                assert len(stored) == len(first), first
                assert sum(r.is_new for r in stored) == 1, first
                assert {(r.order, r.created_at) for r in stored} == {
                    (stored[0].order, stored[0].created_at)}
                results[0] = next(r for r in stored if r.is_new)
            else:  # and every duplicate of a refused gift the same refusal
                assert len(set(first)) == 1, first
            short: list[tuple[int, int]] = []  # (sender, price) refused for want of coins
            for (sender, request), result in zip(sends[:len(burst)], results, strict=False):
                expected = self._expected(sender, request)
                if expected in (None, "insufficient_coins") and isinstance(result,
                                                                           GiftOutcome):
                    self._take(sender, request, result)
                elif expected in (None, "insufficient_coins"):
                    assert result == "insufficient_coins", result
                    short.append((sender,
                                  request.quantity * self.model.types[request.slug][0]))
                else:
                    assert result == expected, (result, expected)
            for sender, coins in enumerate(self.model.wallet):
                assert 0 <= coins <= before[sender]
            for sender, price in short:  # it was short then, and has spent nothing since
                assert self.model.wallet[sender] < price

        # -- streams and the catalogue ----------------------------------------------------------

        @precondition(lambda self: any(live for _, live, _ in self.model.streams.values()))
        @rule(stream=st.integers(0, 7))
        def end_a_stream(self, stream: int) -> None:
            live = [s for s, (_, is_live, _) in self.model.streams.items() if is_live]
            chosen = live[stream % len(live)]
            ended = run(services.streams.transition(StreamId(chosen), StreamEvent.END,
                                                    services.clock()))
            latest = run(services.pool.fetchval(
                "SELECT max(created_at) FROM gifts WHERE stream_id = $1", chosen))
            assert ended.ended_at is not None
            assert latest is None or latest <= ended.ended_at  # as committed before the end
            self.model.streams[chosen][1] = False

        def _idle(self) -> list[int]:
            """The creators with no live stream (a creator has one open stream at most)."""
            busy = {creator for creator, live, _ in self.model.streams.values() if live}
            return [c for c in range(len(self.creators)) if c not in busy]

        @precondition(lambda self: len(self.model.streams) < 8 and self._idle())
        @rule(creator=st.integers(0, 1))
        def start_a_stream(self, creator: int) -> None:
            idle = self._idle()
            run(self._new_stream(idle[creator % len(idle)]))

        @rule(kind=st.integers(0, 1), price=st.integers(1, 40), offered=st.booleans())
        def reprice_or_withdraw_a_gift(self, kind: int, price: int, offered: bool) -> None:
            slug = self.slugs[kind]
            run(gifts_service.save_gift_type(GiftType(slug, "Model gift", price,
                                                      GIFT_TYPES[slug][1], "none", offered)))
            self.model.types[slug] = (price, offered)

        # -- money in: purchases, refunds, disputes, debt ---------------------------------------

        @rule(target=purchases, user=st.integers(0, 2), package=st.sampled_from(
            sorted(PACKAGES)), paid=st.booleans())
        def buy_coins(self, user: int, package: str, paid: bool) -> Any:
            account = self.senders[user]

            async def buy() -> Any:
                purchase, is_new = await services.purchases.create(
                    account, purchase_id=uuid.uuid4(), slug=package, method="payment_intent",
                    success_url="http://x/ok", cancel_url="http://x/no")
                assert is_new
                return await services.purchases.complete_test_payment(account, purchase.id,
                                                                      paid)

            purchase = run(buy())
            assert purchase.status == ("paid" if paid else "failed")
            if not paid:
                return multiple()
            coins, amount = PACKAGES[package]
            self._give(user, coins)
            return Bought(purchase.id, user, coins, amount, purchase.payment_intent_id)

        def _event(self, bought: Bought, kind: str, obj: dict[str, Any]) -> str:
            event = {"id": f"evt_{uuid.uuid4().hex}", "object": "event", "type": kind,
                     "created": 1, "data": {"object": {
                         **obj, "payment_intent": bought.payment_intent_id,
                         "metadata": {"purchase_id": str(bought.id)}}}}
            result: str = run(services.purchases.handle_event(event))
            return result

        @rule(bought=purchases, share=st.integers(1, 100))
        def refund(self, bought: Bought, share: int) -> None:
            refunded = -(-bought.amount_minor * share // 100)
            assert self._event(bought, "charge.refunded", {
                "id": f"ch_{bought.id.hex[:12]}", "object": "charge",
                "amount": bought.amount_minor, "amount_refunded": refunded}) == "applied"
            bought.refunded_minor = max(bought.refunded_minor, refunded)
            self._reverse_to(bought)

        @rule(bought=purchases, stage=st.sampled_from(["open", "won", "lost"]))
        def dispute(self, bought: Bought, stage: str) -> None:
            kind = "charge.dispute.created" if stage == "open" else "charge.dispute.closed"
            assert self._event(bought, kind, {
                "id": f"dp_{bought.id.hex[:12]}", "object": "dispute",
                "amount": bought.amount_minor, "status": stage}) == "applied"
            # One dispute per purchase here: its status only moves forward.
            if bought.dispute_status is None or (
                    DISPUTE_RANK[stage] > DISPUTE_RANK[bought.dispute_status]):
                bought.dispute_status, bought.dispute_minor = stage, bought.amount_minor
            self._reverse_to(bought)

        @rule(user=st.integers(0, 2))
        def settle_debt(self, user: int) -> None:
            settled = run(services.purchases.settle_debt(self.senders[user].id))
            expected = min(self.model.wallet[user], self.model.debt[user])
            assert settled == expected
            self.model.wallet[user] -= expected
            self.model.debt[user] -= expected

        # -- money out: payouts -----------------------------------------------------------------

        @rule(target=payouts, creator=st.integers(0, 1),
              diamonds=st.integers(MIN_PAYOUT_DIAMONDS, 200))
        def pay_out(self, creator: int, diamonds: int) -> Any:
            payout_id = uuid.uuid4()
            try:
                payout, is_new = run(services.payouts.request(self.creators[creator].id,
                                                              payout_id, diamonds))
            except ClientError as exc:
                assert diamonds > self.model.earnings[creator], exc
                assert _error(exc) == "insufficient_diamonds"
                return multiple()
            assert is_new and payout.status == "paid"
            self.model.earnings[creator] -= diamonds
            return (creator, payout)

        @rule(made=payouts)
        def retry_a_payout(self, made: tuple[int, Payout]) -> None:
            creator, payout = made
            again, is_new = run(services.payouts.request(self.creators[creator].id,
                                                         payout.id, payout.diamonds))
            assert not is_new and again == payout

        # -- Redis ------------------------------------------------------------------------------

        @rule(stream=st.integers(0, 7))
        def redis_loses_a_projection_and_it_is_rebuilt(self, stream: int) -> None:
            chosen = self._stream(stream)

            # Every key the projection keeps for the stream (ledger/projection.py): a SCAN
            # of the shared Redis would cost more than the rest of the step.
            names = ["applied", "totals", "top", "goal", "goal:applied"]
            names += [f"combo:{sender.id}:{slug}" for sender in self.senders
                      for slug in self.slugs]
            prefix = f"{services.settings.redis_prefix}proj:stream:{{{chosen}}}:"

            async def flush_and_rebuild() -> None:
                await services.redis.delete(*(prefix + name for name in names))
                await gifts_service.projection.rebuild(services.pool, chosen)

            run(flush_and_rebuild())

        # -- invariants -------------------------------------------------------------------------

        @invariant()
        def ledger_matches_the_model(self) -> None:
            senders = [a.id for a in self.senders]
            creators = [a.id for a in self.creators]

            streams = list(self.model.streams)
            prefix = f"{services.settings.redis_prefix}proj:stream:"

            async def read() -> tuple[dict[Any, int], int, dict[uuid.UUID, int]]:
                rows = await services.pool.fetch(
                    "SELECT owner_id, kind, balance FROM ledger_accounts"
                    " WHERE owner_id = ANY($1::uuid[])"
                    " UNION ALL SELECT NULL, 'gifts', count(*) FROM gifts"
                    " WHERE stream_id = ANY($2::uuid[])", senders + creators, streams)
                # The projection's stream totals (RedisProjection.totals), in one round trip.
                pipe = services.redis.pipeline(transaction=False)
                for stream in streams:
                    pipe.hget(f"{prefix}{{{stream}}}:totals", "coins")
                coins = await pipe.execute()
                gifts = next(r["balance"] for r in rows if r["kind"] == "gifts")
                return ({(r["owner_id"], r["kind"]): r["balance"] for r in rows}, gifts,
                        {s: int(c or 0) for s, c in zip(streams, coins, strict=True)})

            balances, gifts, totals = run(read())
            for index, sender in enumerate(senders):
                assert balances.get((sender, "wallet"), 0) == self.model.wallet[index] >= 0
                assert -balances.get((sender, "debt"), 0) == self.model.debt[index] >= 0
            for index, creator in enumerate(creators):
                assert balances.get((creator, "earnings"), 0) == self.model.earnings[index]
            assert gifts == self.model.gifts
            assert totals == {s: coins for s, (_, _, coins) in self.model.streams.items()}

    return LedgerMachine


# The suite's per-test timeout (120 s) catches hangs; this test's time grows with its size
# (and with the machine's load), so its own limit does too: 0.2 s per step, well above the
# 0.05 s or so a step takes (docs/ledger.md).
@pytest.mark.timeout(max(120, EXAMPLES * STEPS // 5))
def test_the_ledger_against_a_model(backend: Any) -> None:
    # A database of its own: the machine adds users, streams and gift types, which must not
    # leak into the shared database (a gift type there would stop the catalogue's seeding).
    loop = asyncio.new_event_loop()
    database = own_database(backend, migrated=True)
    services: Services | None = None
    try:
        database_url = loop.run_until_complete(database.__aenter__())
        config = Settings(database_url=Secret(database_url),
                          redis_url=Secret(backend.redis_url),
                          redis_prefix=f"{backend.redis_prefix}stateful:",
                          platform_cut_bp=CUT_BP, payout_min_diamonds=MIN_PAYOUT_DIAMONDS,
                          db_pool_max=4,
                          spend_burst_purchases=1_000_000, daily_spend_cap_minor=10**12)
        services = loop.run_until_complete(Services.connect(
            config, database_url=database_url, redis_url=backend.redis_url))
        loop.run_until_complete(services.gifts.start())
        run_state_machine_as_test(make_machine(loop, services), settings=settings(
            max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))
        # Every audit check over everything the examples wrote: each transfer sums to zero,
        # no wallet below zero, balances equal their entries, each gift applied once...
        checks = loop.run_until_complete(verify_postgres(services.pool))
        assert [c.name for c in checks if not c.ok] == []
    finally:
        if services is not None:
            loop.run_until_complete(services.gifts.stop())
            loop.run_until_complete(services.close())
        loop.run_until_complete(database.__aexit__(None, None, None))
        loop.close()


@pytest.fixture(autouse=True)
def _no_running_loop() -> None:
    """The machine runs its own event loop; make sure none is running here."""
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()
