-- Component bytes in pieces of at most 1 MiB, so that no single value comes
-- near a server's packet limit (MariaDB's max_allowed_packet is 16 MiB by
-- default, below the 32 MiB upload limit). Versions stored before this
-- migration keep their bytes in plugin_versions.component.

CREATE TABLE plugin_chunks (
    name VARCHAR(64) NOT NULL,
    version BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    bytes BLOB NOT NULL,
    PRIMARY KEY (name, version, seq)
);
