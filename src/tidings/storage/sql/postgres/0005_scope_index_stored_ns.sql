-- The scope rows' indexes carry the stored time too, so a subtree's page reads its scope rows
-- from the index alone. A page is read from a window of days: the window's bounds on
-- stored_ns, and the join to each row's event (by seq and stored_ns), made every scope row
-- a read of its heap page, about a third of the blocks a page of a type in a subtree read
-- from disk on a cold cache (87 of 269 in one such page at 10,000,000 events).
--
-- Each index is built anew and the old one dropped, holding event_scopes locked against
-- writes until the migration commits: on a big database, run `tidings migrate` at a quiet time.
CREATE INDEX event_scopes_order_stored ON event_scopes (scope, tx, seq) INCLUDE (stored_ns);
CREATE INDEX event_scopes_type_stored ON event_scopes (scope, type, tx, seq) INCLUDE (stored_ns);
DROP INDEX event_scopes_order;
DROP INDEX event_scopes_type;
ALTER INDEX event_scopes_order_stored RENAME TO event_scopes_order;
ALTER INDEX event_scopes_type_stored RENAME TO event_scopes_type;
