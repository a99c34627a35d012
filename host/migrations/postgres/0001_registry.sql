-- The registry: plugins and their versions, scenarios, members, and the
-- generation counter replicas poll. Times are Unix milliseconds.

CREATE TABLE registry_generation (
    id INTEGER PRIMARY KEY,
    generation BIGINT NOT NULL
);
INSERT INTO registry_generation (id, generation) VALUES (1, 0);

CREATE TABLE plugins (
    name VARCHAR(64) PRIMARY KEY,
    current_version BIGINT NOT NULL,
    latest_version BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE plugin_versions (
    name VARCHAR(64) NOT NULL REFERENCES plugins (name) ON DELETE CASCADE,
    version BIGINT NOT NULL,
    sha256 VARCHAR(64) NOT NULL,
    size_bytes BIGINT NOT NULL,
    component BYTEA NOT NULL,
    kind VARCHAR(16) NOT NULL,
    declared_name VARCHAR(64) NOT NULL,
    declared_version VARCHAR(64) NOT NULL,
    description TEXT NOT NULL,
    config_schema TEXT NOT NULL,
    uploaded_at BIGINT NOT NULL,
    uploaded_by VARCHAR(64) NOT NULL,
    PRIMARY KEY (name, version),
    UNIQUE (name, sha256)
);

CREATE TABLE scenarios (
    scenario_id VARCHAR(128) PRIMARY KEY,
    plugin_name VARCHAR(64) NOT NULL,
    plugin_version BIGINT,
    enabled BIGINT NOT NULL,
    document TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    updated_by VARCHAR(64) NOT NULL
);
CREATE INDEX scenarios_plugin ON scenarios (plugin_name);

CREATE TABLE members (
    member_id VARCHAR(128) PRIMARY KEY,
    attributes TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
