-- Leases with fencing for the SQLite store (see `eventflow::lease`): one owner at a time for
-- work shared by the processes of one node. Times are microseconds since the Unix epoch, by the
-- node's clock (every process sharing the file runs on that node).

-- One row per leased piece of work, kept after a release (expired at once) so the epoch only
-- ever grows.
CREATE TABLE leases (
    name        TEXT    NOT NULL,
    partition   INTEGER NOT NULL CHECK (partition >= 0 AND partition <= 4294967295),
    owner       TEXT    NOT NULL,
    epoch       INTEGER NOT NULL CHECK (epoch > 0),
    expires_at  INTEGER NOT NULL,
    PRIMARY KEY (name, partition)
);

-- Live workers of a group, each until its last heartbeat's time-to-live runs out.
CREATE TABLE lease_members (
    group_name  TEXT    NOT NULL,
    member      TEXT    NOT NULL,
    expires_at  INTEGER NOT NULL,
    PRIMARY KEY (group_name, member)
);
