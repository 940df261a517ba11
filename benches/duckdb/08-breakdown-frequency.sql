WITH buckets AS (
    SELECT gateway, time_bucket(INTERVAL '10 minutes', time) AS bucket,
           count(*) FILTER (WHERE value = 0) * 1.0 / count(*) >= 0.5 AS down
    FROM measurements WHERE type = 'telemetry' AND series = 'gps.speed'
    GROUP BY gateway, bucket
), transitions AS (
    SELECT gateway, down, lead(down) OVER (PARTITION BY gateway ORDER BY bucket) AS next_down
    FROM buckets)
SELECT json_extract_string(m.value, '$') AS model, count(*) AS breakdowns,
       count(DISTINCT t.gateway) AS trucks
FROM transitions t JOIN twin m ON m.entity = t.gateway AND m.fragment = 'model'
WHERE NOT t.down AND t.next_down
GROUP BY model ORDER BY model
