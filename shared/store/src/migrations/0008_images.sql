-- The image library (dragonfly_core::image): OS images by name, remote (a URL) or local (a
-- file in the images directory, served by ipxed). Written by apid: the document when an
-- operator adds or deletes an image, the status when apid has checksummed a local file.
-- Read by apid (templates naming an image are resolved when a workflow is created) and by
-- ipxed (which file a name means, whether it is public, and what was checksummed).
CREATE TABLE images (
    name             TEXT    PRIMARY KEY,
    spec             TEXT    NOT NULL CHECK (json_valid(spec)),
    -- ImageStatus as JSON; its phase also in a column, to find what is left to checksum.
    status           TEXT    NOT NULL CHECK (json_valid(status)),
    phase            TEXT    NOT NULL CHECK (phase IN ('Pending', 'Ready', 'Failed')),
    created_at_ms    INTEGER NOT NULL,
    updated_at_ms    INTEGER NOT NULL,
    resource_version INTEGER NOT NULL
) STRICT;
