WITH buckets AS (
    SELECT gateway, time_bucket(INTERVAL '10 minutes', time) AS bucket, max(value) AS top_speed
    FROM measurements WHERE type = 'telemetry' AND series = 'gps.speed'
    GROUP BY gateway, bucket)
SELECT json_extract_string(d.value, '$') AS depot, json_extract_string(m.value, '$') AS model,
       iso(date_trunc('day', b.bucket)) AS day, count(DISTINCT b.gateway) AS trucks,
       round(count(*) FILTER (WHERE b.top_speed > 0) / (144.0 * count(DISTINCT b.gateway)), 3) AS active_share
FROM buckets b
JOIN gateway_twin_history d
  ON d.gateway = b.gateway AND d.fragment = 'depot'
 AND b.bucket >= d.valid_from AND (d.valid_to IS NULL OR b.bucket < d.valid_to)
JOIN twin m ON m.entity = b.gateway AND m.fragment = 'model'
GROUP BY depot, model, day
ORDER BY depot, model, day
