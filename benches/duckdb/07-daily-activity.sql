WITH buckets AS (
    SELECT entity, time_bucket(INTERVAL '10 minutes', time) AS bucket, max(value) AS top_speed
    FROM measurements WHERE type = 'telemetry' AND series = 'gps.speed'
    GROUP BY entity, bucket)
SELECT d.name AS depot, json_extract_string(m.value, '$') AS model,
       iso(date_trunc('day', b.bucket)) AS day, count(DISTINCT b.entity) AS trucks,
       round(count(*) FILTER (WHERE b.top_speed > 0) / (144.0 * count(DISTINCT b.entity)), 3) AS active_share
FROM buckets b
JOIN entities e ON e.entity = b.entity
JOIN entities d ON d.entity = e.parent
JOIN twin m ON m.entity = e.entity AND m.fragment = 'model'
GROUP BY d.name, model, day
ORDER BY depot, model, day
