-- Agent identity (docs/security.md, "Agents: per-boot tokens").
--
-- boot_sightings: the boot path's witness that a MAC really booted. dhcpd writes one row per
-- MAC each time it gives that MAC a boot answer (any mode); ipxed mints a token for a MAC only
-- if it was sighted moments ago (or asks from the address dhcpd leased to it). One row per
-- MAC, overwritten: the table holds at most the MACs dhcpd answered (which its new-client
-- limits bound), and dhcpd's expiry sweep removes rows older than an hour.
CREATE TABLE boot_sightings (
    mac          TEXT    PRIMARY KEY,                -- aa:bb:cc:dd:ee:ff
    seen_at_ms   INTEGER NOT NULL,
    address      TEXT,                               -- the address offered, leased or seen; NULL when none
    via          TEXT    NOT NULL CHECK (via IN ('reservation', 'proxy', 'autoproxy'))
) STRICT;
CREATE INDEX boot_sightings_seen ON boot_sightings(seen_at_ms);

-- boot_sessions: one per MAC, the boot a token belongs to. ipxed opens one (a fresh random
-- nonce) each time it mints a token for a boot; the new row replaces the old, so a token of a
-- past boot stops working. apid accepts an agent's token only while its nonce is the MAC's
-- current session, unrevoked and unexpired; reaching Ready revokes it.
CREATE TABLE boot_sessions (
    mac            TEXT    PRIMARY KEY,
    nonce          BLOB    NOT NULL CHECK (length(nonce) = 16),
    created_at_ms  INTEGER NOT NULL,
    expires_at_ms  INTEGER NOT NULL,                -- the session's end; tokens are renewed within it
    revoked_at_ms  INTEGER
) STRICT;
CREATE INDEX boot_sessions_expiry ON boot_sessions(expires_at_ms);

-- conflicts: a hardware report claimed a MAC or an SMBIOS UUID that belongs to another
-- machine. The report was refused (nothing of it written); the claim is kept here for an
-- operator to look at. One row per (kind, claimed value, claiming MAC), counted.
CREATE TABLE conflicts (
    id             INTEGER PRIMARY KEY,
    kind           TEXT    NOT NULL CHECK (kind IN ('mac', 'smbiosUuid')),
    claimed        TEXT    NOT NULL,                 -- the MAC or UUID claimed
    claimant_mac   TEXT    NOT NULL,                 -- the boot token's MAC (the reporter)
    owner_id       TEXT    NOT NULL REFERENCES machines(id) ON DELETE CASCADE,
    first_seen_ms  INTEGER NOT NULL,
    last_seen_ms   INTEGER NOT NULL,
    count          INTEGER NOT NULL,
    UNIQUE (kind, claimed, claimant_mac)
) STRICT;
CREATE INDEX conflicts_owner ON conflicts(owner_id);
