//! The twin state, health and alarm views: plain SQL over the tables, registered with every
//! session so that users and the `queries/` examples share one definition.

/// `(name, SELECT …)` of each view, in the order they must be created.
pub(crate) const VIEWS: [(&str, &str); 6] = [
    ("twin_history", TWIN_HISTORY),
    ("twin", TWIN),
    ("gateway_twin_history", GATEWAY_TWIN_HISTORY),
    ("gateways", GATEWAYS),
    ("health_current", HEALTH_CURRENT),
    ("alarms_active", ALARMS_ACTIVE),
];

/// One row per value a twin fragment had: a fragment set again to the same value is not a
/// new version, a deletion ends the last one. As for entities, a fragment's first value is
/// valid from the beginning of time, because twin messages carry no time of their own.
const TWIN_HISTORY: &str = "
WITH ordered AS (
    SELECT gateway, entity, fragment, value, time,
           LAG(value) OVER (PARTITION BY entity, fragment ORDER BY time) AS previous,
           ROW_NUMBER() OVER (PARTITION BY entity, fragment ORDER BY time) AS n
    FROM twin_changes
), changed AS (
    SELECT gateway, entity, fragment, value, time, n,
           LEAD(time) OVER (PARTITION BY entity, fragment ORDER BY time) AS valid_to
    FROM ordered
    WHERE n = 1 OR value IS DISTINCT FROM previous
)
SELECT gateway, entity, fragment, value,
       CASE WHEN n = 1 THEN arrow_cast(0, 'Timestamp(Nanosecond, Some(\"UTC\"))') ELSE time END AS valid_from,
       valid_to,
       time AS updated_at
FROM changed
WHERE value IS NOT NULL";

/// The value every twin fragment has now.
const TWIN: &str = "
SELECT gateway, entity, fragment, value, updated_at
FROM twin_history
WHERE valid_to IS NULL";

/// The twin history of the gateways' main devices, where a fleet keeps what groups gateways
/// (depot, customer, region): joined on `gateway` and the reading's time, it tells which group a
/// gateway was in when a row was written.
const GATEWAY_TWIN_HISTORY: &str = "
SELECT gateway, fragment, value, valid_from, valid_to, updated_at
FROM twin_history
WHERE entity = gateway";

/// Every gateway heard of: its main device, registered at its first message.
const GATEWAYS: &str = "
SELECT gateway, name, registered_at AS first_seen
FROM entities
WHERE entity = gateway";

/// The newest health status of every entity that reports one.
const HEALTH_CURRENT: &str = "
SELECT gateway, entity, status, pid, time, attributes
FROM (
    SELECT gateway, entity, status, pid, time, attributes,
           ROW_NUMBER() OVER (PARTITION BY entity ORDER BY time DESC) AS newest
    FROM health
)
WHERE newest = 1 AND status IS NOT NULL";

/// Alarms raised and not cleared since, one row per (entity, type), counted as Cumulocity
/// counts them: a raise while the alarm is active is a repeat (count + 1) that updates it.
const ALARMS_ACTIVE: &str = "
WITH last_clear AS (
    SELECT entity, type, max(time) AS cleared_at
    FROM alarms
    WHERE status = 'cleared'
    GROUP BY entity, type
), open_raises AS (
    SELECT a.gateway, a.entity, a.type, a.severity, a.text, a.attributes, a.time
    FROM alarms a
    LEFT JOIN last_clear c ON a.entity = c.entity AND a.type = c.type
    WHERE a.status = 'raised' AND (c.cleared_at IS NULL OR a.time > c.cleared_at)
), ranked AS (
    SELECT gateway, entity, type, severity, text, attributes, time,
           ROW_NUMBER() OVER (PARTITION BY entity, type ORDER BY time DESC) AS newest,
           MIN(time) OVER (PARTITION BY entity, type) AS first_raised,
           COUNT(*) OVER (PARTITION BY entity, type) AS count
    FROM open_raises
)
SELECT gateway, entity, type, severity, text, first_raised, time AS last_updated, count, attributes
FROM ranked
WHERE newest = 1";
