-- Stored rows a reader could not decode (payload or metadata nested past what serde_json parses,
-- written by an older version or another tool), parked once each in `dead_letters` under the
-- source `store:undecodable`.
--
-- One row per undecodable event, kept after its dead letter is taken or discarded: the primary
-- key decides, in the same statement that parks it, that a second reader, poll or process
-- parks (and logs) nothing, and that a row an operator has dealt with is never parked again.
CREATE TABLE undecodable_events (
    event_id        uuid        NOT NULL,
    position        bigint      NOT NULL,
    dead_letter_id  uuid        NOT NULL,
    parked_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT undecodable_events_pkey PRIMARY KEY (event_id)
);
