-- The archive's column types, learned once per scenario and kept, so that a column
-- of a scenario's archive has one type in every file (readers that merge files by
-- column name refuse a column whose type changes). The first replica to learn a
-- column wins; the others read its type back.

CREATE TABLE archive_columns (
    scenario_id VARCHAR(128) NOT NULL,
    name VARCHAR(255) NOT NULL,
    kind VARCHAR(16) NOT NULL,
    learned_at BIGINT NOT NULL,
    PRIMARY KEY (scenario_id, name)
) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
