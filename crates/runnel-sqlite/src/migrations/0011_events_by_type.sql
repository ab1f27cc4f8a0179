-- `$all` filtered by event type reads in position order (projections and stream jobs that
-- select their events by type): the (event_type, recorded_at) index cannot serve
-- `position > ?` in position order, so each page re-sorted every later event of the type
-- and catching up grew with the square of the store. This index makes a page a range scan.
CREATE INDEX events_by_type ON events (event_type, position);
