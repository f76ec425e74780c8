-- Dead letters: events that delivery gave up on (see `DeadLetterStore`), parked by the relay,
-- a saga's outbox or a projection runner with the reason, the error and the attempt count.
--
-- The event is kept as JSON text, not jsonb: an event is often parked because something
-- rejected it, and jsonb rejects some JSON text accepts (`\u0000`).
CREATE TABLE dead_letters (
    seq         bigserial   NOT NULL,
    id          uuid        NOT NULL,
    source      text        NOT NULL,
    event_id    uuid        NOT NULL,
    event       text        NOT NULL,
    reason      text        NOT NULL,
    error       text        NOT NULL,
    attempts    integer     NOT NULL,
    parked_at   timestamptz NOT NULL,
    CONSTRAINT dead_letters_pkey PRIMARY KEY (id)
);

CREATE INDEX dead_letters_source_idx ON dead_letters (source, seq);
