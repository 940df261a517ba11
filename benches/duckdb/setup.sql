-- The tables and views of Twinlake's SQL, rebuilt in DuckDB over the Parquet files of each
-- Delta table's current snapshot ({measurements} and the like are the file lists). The
-- simulated fleet of gateways neither moves nor deregisters entities, so the current
-- hierarchy is the hierarchy at every reading's time; the twin does change (firmware, the
-- depot a truck is in), so its history is kept.
SET TimeZone = 'UTC';
-- Naive UTC timestamps: DuckDB buckets them without time zone arithmetic.
CREATE VIEW measurements AS
    SELECT * REPLACE (CAST(time AS TIMESTAMP) AS time) FROM read_parquet({measurements});
CREATE VIEW alarms AS SELECT * FROM read_parquet({alarms});
CREATE VIEW events AS SELECT * FROM read_parquet({events});
CREATE VIEW health AS SELECT * FROM read_parquet({health});
CREATE MACRO iso(t) AS strftime(t, '%Y-%m-%dT%H:%M:%SZ');
-- An entity's label: its name, else the distinctive part of its topic id (the gateway for its
-- main device, the device, the service).
CREATE MACRO label(topic_id, gateway, name) AS coalesce(name, CASE
    WHEN topic_id = 'device/main//' THEN gateway
    WHEN topic_id LIKE 'device/%//' THEN split_part(topic_id, '/', 2)
    WHEN topic_id LIKE 'device/%/service/%' THEN split_part(topic_id, '/', 4)
    ELSE rtrim(topic_id, '/') END);
CREATE TABLE entities AS
    SELECT gateway, entity, topic_id, kind, parent, name, type FROM (
        SELECT *, row_number() OVER (PARTITION BY entity ORDER BY time DESC) AS n
        FROM read_parquet({entity_changes}))
    WHERE n = 1 AND change <> 'deregistered';
CREATE TABLE entity_paths AS
    WITH RECURSIVE up(entity, next, path) AS (
        SELECT entity, parent, label(topic_id, gateway, name) FROM entities
        UNION ALL
        SELECT up.entity, p.parent, label(p.topic_id, p.gateway, p.name) || '/' || up.path
        FROM up JOIN entities p ON p.entity = up.next)
    -- Each gateway's main device is registered (by Twinlake, from its first message): every
    -- chain ends at a root.
    SELECT entity, path FROM up WHERE next IS NULL;
CREATE TABLE ancestors AS
    WITH RECURSIVE up(descendant, ancestor, depth) AS (
        SELECT entity, parent, 1 FROM entities WHERE parent IS NOT NULL
        UNION ALL
        SELECT up.descendant, p.parent, up.depth + 1
        FROM up JOIN entities p ON p.entity = up.ancestor WHERE p.parent IS NOT NULL)
    SELECT * FROM up;
-- As Twinlake's twin_history: a fragment's first value is valid from the beginning of time.
CREATE TABLE twin_history AS
    WITH ordered AS (
        SELECT gateway, entity, fragment, value, time,
               lag(value) OVER (PARTITION BY entity, fragment ORDER BY time) AS previous,
               row_number() OVER (PARTITION BY entity, fragment ORDER BY time) AS n
        FROM read_parquet({twin_changes})
    ), changed AS (
        SELECT gateway, entity, fragment, value, time, n,
               lead(time) OVER (PARTITION BY entity, fragment ORDER BY time) AS valid_to
        FROM ordered WHERE n = 1 OR value IS DISTINCT FROM previous)
    SELECT gateway, entity, fragment, value,
           CASE WHEN n = 1 THEN TIMESTAMPTZ '1970-01-01 00:00:00+00' ELSE time END AS valid_from,
           valid_to
    FROM changed WHERE value IS NOT NULL;
CREATE VIEW twin AS SELECT entity, fragment, value FROM twin_history WHERE valid_to IS NULL;
CREATE VIEW gateway_twin_history AS
    SELECT gateway, fragment, value, valid_from, valid_to FROM twin_history WHERE entity = gateway;
CREATE VIEW health_current AS
    SELECT entity, status, time FROM (
        SELECT *, row_number() OVER (PARTITION BY entity ORDER BY time DESC) AS n FROM health)
    WHERE n = 1 AND status IS NOT NULL;
CREATE VIEW latest AS
    SELECT gateway, entity, type, series, arg_max(value, time) AS value, max(time) AS time
    FROM measurements GROUP BY gateway, entity, type, series;
