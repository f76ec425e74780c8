-- Operator controls of transactional projections (`eventflow projections pause|resume`): a
-- paused projection's runners, in any process, apply nothing until it is resumed. Read in the
-- transaction that locks the projection's checkpoint row, so a batch never straddles a pause.
CREATE TABLE projection_controls (
    name        text        NOT NULL,
    paused      boolean     NOT NULL DEFAULT false,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT projection_controls_pkey PRIMARY KEY (name)
);
