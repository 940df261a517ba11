WITH updates AS (
    SELECT date_trunc('day', time) AS day,
           json_extract_string(attributes, '$.version') AS version,
           count(DISTINCT gateway) AS trucks
    FROM events
    WHERE type = 'firmware_updated'
    GROUP BY day, version
)
SELECT iso(day) AS day, version, trucks,
       sum(trucks) OVER (PARTITION BY version ORDER BY day) AS trucks_so_far
FROM updates
ORDER BY day, version
