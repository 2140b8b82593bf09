"""Hypothesis drives the real ledger (real PostgreSQL, real Redis) and a pure model side by
side: grants, gifts, retries with the same id, the same id with another gift, bursts of
concurrent gifts, Redis losing the projection and rebuilding it. After every step the
database's invariants hold and every balance equals the model's."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    multiple,
    rule,
    run_state_machine_as_test,
)

from ledger.audit import verify_postgres
from ledger.batcher import GiftBatcher, GiftOrder, GiftOutcome, InsufficientCoins, grant
from ledger.projection import RedisProjection
from livecore.economy import split
from livecore.errors import Conflict
from tests.support import own_database

CUT_BP = 5000


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def make_machine(database_url: str, redis_url: str, prefix: str) -> type[RuleBasedStateMachine]:
    class LedgerMachine(RuleBasedStateMachine):
        gifts = Bundle("gifts")

        def __init__(self) -> None:
            super().__init__()
            self.loop = asyncio.new_event_loop()
            self.senders = [uuid.uuid4() for _ in range(3)]
            self.creators = [uuid.uuid4() for _ in range(2)]
            self.streams = [uuid.uuid4() for _ in range(2)]
            self.wallet = dict.fromkeys(self.senders, 0)
            self.earnings = dict.fromkeys(self.creators, 0)
            self.stream_coins = dict.fromkeys(self.streams, 0)
            self.grants: dict[uuid.UUID, tuple[uuid.UUID, int]] = {}
            self.run(self._setup())

        def run(self, coroutine: Any) -> Any:
            return self.loop.run_until_complete(coroutine)

        async def _setup(self) -> None:
            self.pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
            self.redis = aioredis.from_url(redis_url)
            self.projection = RedisProjection(self.redis, prefix)
            users = [(u, f"s{u.hex[:16]}", ["viewer"]) for u in self.senders]
            users += [(u, f"c{u.hex[:16]}", ["viewer", "creator"]) for u in self.creators]
            await self.pool.executemany(
                "INSERT INTO users (id, username, password_hash, birthdate, roles, created_at)"
                " VALUES ($1, $2, 'x', '1990-01-01', $3, now())", users)
            await self.pool.executemany(
                "INSERT INTO streams (id, creator_id, title, stream_key, created_at, state,"
                " started_at) VALUES ($1, $2, 't', $3, now(), 'live', now())",
                [(s, c, uuid.uuid4().hex) for s, c in zip(self.streams, self.creators,
                                                          strict=True)])
            await self.pool.execute(
                "INSERT INTO gift_types (slug, name, price_coins, streakable, animation)"
                " VALUES ('rose', 'Rose', 1, true, 'rose') ON CONFLICT DO NOTHING")
            self.batcher = GiftBatcher(self.pool, clock=now, max_wait_s=0.001)
            await self.batcher.start()

        def teardown(self) -> None:
            async def close() -> None:
                await self.batcher.stop()
                await self.pool.close()
                await self.redis.aclose()

            self.run(close())
            self.loop.close()

        # -- the model ---------------------------------------------------------------------

        def _order(self, sender: int, target: int, quantity: int,
                   gift_id: uuid.UUID | None = None) -> GiftOrder:
            parts = split(quantity, CUT_BP)
            return GiftOrder(gift_id or uuid.uuid4(), self.senders[sender], self.streams[target],
                             self.creators[target], "rose", quantity, quantity,
                             parts.creator_share, parts.platform_cut)

        def _model_apply(self, order: GiftOrder) -> bool:
            if self.wallet[order.sender_id] < order.price:
                return False
            self.wallet[order.sender_id] -= order.price
            self.earnings[order.creator_id] += order.creator_share
            self.stream_coins[order.stream_id] += order.price
            return True

        async def _send(self, order: GiftOrder) -> GiftOutcome | Exception:
            try:
                outcome = await self.batcher.send(order)
            except (InsufficientCoins, Conflict) as exc:
                return exc
            await self.projection.apply(gift_id=outcome.order.gift_id,
                                        stream_id=outcome.order.stream_id,
                                        creator_id=outcome.order.creator_id,
                                        sender_id=outcome.order.sender_id,
                                        coins=outcome.order.price,
                                        at=outcome.created_at)
            return outcome

        # -- rules -------------------------------------------------------------------------

        @rule(sender=st.integers(0, 2), coins=st.integers(1, 200))
        def grant_coins(self, sender: int, coins: int) -> None:
            grant_id = uuid.uuid4()
            applied = self.run(grant(self.pool, grant_id=grant_id, user_id=self.senders[sender],
                                     coins=coins, memo="", actor_id=None, now=now()))
            assert applied
            self.wallet[self.senders[sender]] += coins
            self.grants[grant_id] = (self.senders[sender], coins)

        @rule()
        def retry_a_grant(self) -> None:
            for grant_id, (user, coins) in list(self.grants.items())[:1]:
                applied = self.run(grant(self.pool, grant_id=grant_id, user_id=user,
                                         coins=coins, memo="", actor_id=None, now=now()))
                assert not applied

        @rule(target=gifts, sender=st.integers(0, 2), stream=st.integers(0, 1),
              quantity=st.integers(1, 99))
        def send_gift(self, sender: int, stream: int, quantity: int) -> Any:
            order = self._order(sender, stream, quantity)
            result = self.run(self._send(order))
            if self._model_apply(order):
                assert isinstance(result, GiftOutcome) and result.is_new
                return order
            assert isinstance(result, InsufficientCoins)
            return multiple()

        @rule(order=gifts)
        def retry_same_gift(self, order: GiftOrder) -> None:
            result = self.run(self._send(order))
            assert isinstance(result, GiftOutcome) and not result.is_new
            assert result.order == order

        @rule(order=consumes(gifts), quantity=st.integers(1, 99))
        def reuse_id_for_another_gift(self, order: GiftOrder, quantity: int) -> None:
            other = self._order(self.senders.index(order.sender_id),
                                self.streams.index(order.stream_id),
                                quantity if quantity != order.quantity else quantity % 99 + 1,
                                gift_id=order.gift_id)
            result = self.run(self._send(other))
            assert isinstance(result, Conflict) and result.code == "gift_id_conflict"

        @rule(burst=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 1),
                                       st.integers(1, 60)), min_size=2, max_size=12))
        def concurrent_burst(self, burst: list[tuple[int, int, int]]) -> None:
            orders = [self._order(*spec) for spec in burst]

            async def all_at_once() -> list[Any]:
                return list(await asyncio.gather(*(self._send(o) for o in orders)))

            results = self.run(all_at_once())
            for order, result in zip(orders, results, strict=True):
                # The batcher funds in arrival order, which is submission order here.
                if self._model_apply(order):
                    assert isinstance(result, GiftOutcome), result
                else:
                    assert isinstance(result, InsufficientCoins), result

        @rule(stream=st.integers(0, 1))
        def redis_loses_the_projection_and_it_is_rebuilt(self, stream: int) -> None:
            async def flush_and_rebuild() -> None:
                keys = [k async for k in self.redis.scan_iter(
                    match=f"{prefix}proj:stream:{{{self.streams[stream]}}}*")]
                if keys:
                    await self.redis.delete(*keys)
                await self.projection.rebuild(self.pool, self.streams[stream])

            self.run(flush_and_rebuild())

        # -- invariants --------------------------------------------------------------------

        @invariant()
        def ledger_matches_the_model(self) -> None:
            async def read() -> tuple[dict[Any, int], list[Any], dict[Any, int]]:
                rows = await self.pool.fetch(
                    "SELECT owner_id, kind, balance FROM ledger_accounts"
                    " WHERE owner_id = ANY($1::uuid[])", self.senders + self.creators)
                checks = await verify_postgres(self.pool, analyze=False)
                totals = {s: (await self.projection.totals(s)).coins for s in self.streams}
                return ({(r["owner_id"], r["kind"]): r["balance"] for r in rows}, checks,
                        totals)

            balances, checks, totals = self.run(read())
            for sender, coins in self.wallet.items():
                assert balances.get((sender, "wallet"), 0) == coins
            for creator, diamonds in self.earnings.items():
                assert balances.get((creator, "earnings"), 0) == diamonds
            assert [c.name for c in checks if not c.ok] == []
            assert totals == self.stream_coins

    return LedgerMachine


def test_the_ledger_against_a_model(backend: Any) -> None:
    # A database of its own: the machine adds users, streams and a gift type, which must not
    # leak into the shared database (a gift type there would stop the catalogue's seeding).
    loop = asyncio.new_event_loop()
    database = own_database(backend, migrated=True)
    try:
        database_url = loop.run_until_complete(database.__aenter__())
        machine = make_machine(database_url, backend.redis_url,
                               f"{backend.redis_prefix}stateful:")
        run_state_machine_as_test(machine, settings=settings(
            max_examples=12, stateful_step_count=25, deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]))
    finally:
        loop.run_until_complete(database.__aexit__(None, None, None))
        loop.close()


@pytest.fixture(autouse=True)
def _no_running_loop() -> None:
    """The machine runs its own event loop; make sure none is running here."""
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()
