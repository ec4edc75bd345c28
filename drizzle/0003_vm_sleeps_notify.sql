-- Every change of a sleep in progress is announced on hatch_vm_sleeps (payload: the VM id), so the
-- Traefik config of every API replica drops or restores the VM's direct routers at once, and every
-- sidecar knows whether to hold, forward, or cancel for that VM.
CREATE OR REPLACE FUNCTION hatch_vm_sleeps_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'DELETE' THEN
    PERFORM pg_notify('hatch_vm_sleeps', OLD.vm_id);
  ELSE
    PERFORM pg_notify('hatch_vm_sleeps', NEW.vm_id);
  END IF;
  RETURN NULL;
END
$$;
--> statement-breakpoint
CREATE TRIGGER vm_sleeps_notify AFTER INSERT OR UPDATE OF phase, cancelled_at OR DELETE ON vm_sleeps
  FOR EACH ROW EXECUTE FUNCTION hatch_vm_sleeps_notify();
