WITH buckets AS (
    SELECT entity, time_bucket(INTERVAL '10 minutes', time) AS bucket,
           count(*) FILTER (WHERE value = 0) * 1.0 / count(*) >= 0.5 AS down
    FROM measurements WHERE type = 'telemetry' AND series = 'gps.speed'
    GROUP BY entity, bucket
), transitions AS (
    SELECT entity, down, lead(down) OVER (PARTITION BY entity ORDER BY bucket) AS next_down
    FROM buckets)
SELECT json_extract_string(m.value, '$') AS model, count(*) AS breakdowns,
       count(DISTINCT t.entity) AS trucks
FROM transitions t JOIN twin m ON m.entity = t.entity AND m.fragment = 'model'
WHERE NOT t.down AND t.next_down
GROUP BY model ORDER BY model
