-- Reserved addresses (issue 11): an operator's fixed IPv4 address per machine, which dhcpd
-- serves and the metadata service's network-config names.
--
-- dhcp_reservations: written by apid only (PUT/DELETE /api/machines/{id}/address), after
-- checking the address against what dhcpd published (below) and the leases, in the same
-- transaction. One address per machine, on one of its MACs; an address or a MAC at most
-- once. dhcpd reads the whole table at start, on each `dragonfly.reservation.changed` hint
-- and on its reconcile period, and merges it under its configuration file's reservations.
CREATE TABLE dhcp_reservations (
    machine_id       TEXT    PRIMARY KEY REFERENCES machines(id) ON DELETE CASCADE,
    mac              TEXT    NOT NULL UNIQUE,          -- aa:bb:cc:dd:ee:ff
    ip               TEXT    NOT NULL UNIQUE,          -- dotted quad
    created_at_ms    INTEGER NOT NULL,
    updated_at_ms    INTEGER NOT NULL,
    resource_version INTEGER NOT NULL
) STRICT;

-- What dhcpd serves, published by dhcpd at every start (replaced whole), so that apid can
-- validate a reservation against the subnets dhcpd really has, not a copy of its file.
-- dhcp_server: one row; `mode` is dhcpd's mode ('reservation', 'proxy', 'autoproxy').
CREATE TABLE dhcp_server (
    id              INTEGER PRIMARY KEY CHECK (id = 1),
    mode            TEXT    NOT NULL,
    published_at_ms INTEGER NOT NULL
) STRICT;

-- dhcp_subnets: each [[dhcpd.subnets]] (network options included, for network-config).
CREATE TABLE dhcp_subnets (
    network     TEXT    PRIMARY KEY,                   -- 10.99.0.0
    prefix      INTEGER NOT NULL CHECK (prefix BETWEEN 0 AND 32),
    pool_start  TEXT,
    pool_end    TEXT,
    router      TEXT,
    dns         TEXT    NOT NULL DEFAULT '[]' CHECK (json_valid(dns)),
    domain_name TEXT,
    position    INTEGER NOT NULL
) STRICT;

-- dhcp_fixed: the configuration file's [[dhcpd.reservations]], which win over the table
-- above; apid refuses a reservation that would collide with one.
CREATE TABLE dhcp_fixed (
    mac TEXT NOT NULL PRIMARY KEY,
    ip  TEXT NOT NULL UNIQUE
) STRICT;
