"""Money and the database: the PostgreSQL pool, the migrations, and (from the gift issue on)
the double-entry ledger, the gift batcher and the Redis projection."""
