-- DHCP leases (dhcpd, reservation mode). One row per IPv4 address that is not free: bound to
-- a client MAC until expires_at_ms, or declined (a client found it in use: DHCPDECLINE) and
-- kept out of the pool until expires_at_ms. A MAC holds at most one bound lease. Rows whose
-- expiry has passed are free addresses that dhcpd has not swept yet.
CREATE TABLE dhcp_leases (
    ip            TEXT    PRIMARY KEY,                 -- dotted quad, 10.99.0.23
    mac           TEXT,                                -- aa:bb:cc:dd:ee:ff; NULL when declined
    state         TEXT    NOT NULL CHECK (state IN ('bound', 'declined')),
    reserved      INTEGER NOT NULL DEFAULT 0 CHECK (reserved IN (0, 1)),
    expires_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    CHECK ((state = 'bound') = (mac IS NOT NULL))
) STRICT;
CREATE UNIQUE INDEX dhcp_leases_mac ON dhcp_leases(mac) WHERE state = 'bound';
CREATE INDEX dhcp_leases_expiry ON dhcp_leases(expires_at_ms);
