-- How did firmware versions roll out across the fleet, day by day? Each `firmware_updated`
-- event names the version a truck moved to; per day, how many trucks moved to each version
-- that day and in all up to it.
WITH updates AS (
    SELECT date_trunc('day', time) AS day,
           json_get_str(attributes, 'version') AS version,
           count(DISTINCT gateway) AS trucks
    FROM events
    WHERE type = 'firmware_updated'
    GROUP BY date_trunc('day', time), json_get_str(attributes, 'version')
)
SELECT day,
       version,
       trucks,
       sum(trucks) OVER (PARTITION BY version ORDER BY day) AS trucks_so_far
FROM updates
ORDER BY day, version;
