-- Every write to routes is announced on hatch_routes_changed (payload: the VM id) by the database
-- itself: one statement per write instead of INSERT + NOTIFY, and writes made by any tool are seen
-- by every API replica and sidecar. Postgres folds identical notifications within a transaction.
CREATE OR REPLACE FUNCTION hatch_routes_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'DELETE' THEN
    PERFORM pg_notify('hatch_routes_changed', OLD.vm_id);
  ELSE
    PERFORM pg_notify('hatch_routes_changed', NEW.vm_id);
    IF TG_OP = 'UPDATE' AND OLD.vm_id IS DISTINCT FROM NEW.vm_id THEN
      PERFORM pg_notify('hatch_routes_changed', OLD.vm_id);
    END IF;
  END IF;
  RETURN NULL;
END
$$;
--> statement-breakpoint
CREATE TRIGGER routes_notify AFTER INSERT OR UPDATE OR DELETE ON routes
  FOR EACH ROW EXECUTE FUNCTION hatch_routes_notify();
