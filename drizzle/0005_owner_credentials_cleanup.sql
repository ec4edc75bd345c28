-- A route owner's kept key goes with their last route, whoever removes it: the API, the VM sync
-- after a VM was deleted on the platform, a person with psql, or an update that gives the routes
-- another owner. Owners are locked in order with the advisory lock the API takes before it stores a
-- key, so a key is never stored for an owner whose last route is going, nor dropped beside a route
-- that is being created (the API writes the route first, then takes the lock).
CREATE OR REPLACE FUNCTION hatch_owner_credentials_cleanup() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  o text;
BEGIN
  FOR o IN SELECT DISTINCT owner FROM old_routes WHERE owner <> '' ORDER BY owner LOOP
    PERFORM pg_advisory_xact_lock(hashtextextended('hatch-proxy:owner-credentials:' || o, 0));
    DELETE FROM owner_credentials c WHERE c.owner = o AND NOT EXISTS (SELECT 1 FROM routes r WHERE r.owner = o);
  END LOOP;
  RETURN NULL;
END
$$;
--> statement-breakpoint
CREATE TRIGGER routes_owner_credentials_cleanup AFTER DELETE ON routes
  REFERENCING OLD TABLE AS old_routes FOR EACH STATEMENT EXECUTE FUNCTION hatch_owner_credentials_cleanup();
--> statement-breakpoint
CREATE TRIGGER routes_owner_credentials_reown AFTER UPDATE ON routes
  REFERENCING OLD TABLE AS old_routes FOR EACH STATEMENT EXECUTE FUNCTION hatch_owner_credentials_cleanup();
