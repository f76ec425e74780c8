-- The sessions that LISTEN for this schema's notifications, one row per listener connection
-- (its server pid). An append notifies other processes in its own statement only when a row
-- other than its own process's listener exists: an index probe of a tiny table, where asking
-- the server's session list would cost far more than the append. A listener registers when it
-- connects and, at that moment, removes the rows of sessions that are gone; a stale row only
-- costs notifications nobody receives.
CREATE TABLE listeners (
    pid    integer     NOT NULL,
    since  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT listeners_pkey PRIMARY KEY (pid)
);
