-- Which live streams still have a publisher somewhere: the node holding a stream's WHIP
-- publisher renews media_lease_until while it does. A live stream whose lease has lapsed (its
-- node was killed and could not end it) is ended by the sweep (gateway/media.py).
ALTER TABLE streams ADD COLUMN media_lease_until timestamptz;
