WITH buckets AS (
    SELECT gateway, time_bucket(INTERVAL '10 minutes', time) AS bucket, avg(value) AS speed
    FROM measurements WHERE type = 'telemetry' AND series = 'gps.speed'
    GROUP BY gateway, bucket)
SELECT json_extract_string(d.value, '$') AS depot, b.gateway AS truck,
       iso(date_trunc('day', b.bucket)) AS day,
       round(count(*) FILTER (WHERE b.speed > 1) / 6.0, 2) AS driving_hours
FROM buckets b
JOIN gateway_twin_history d
  ON d.gateway = b.gateway AND d.fragment = 'depot'
 AND b.bucket >= d.valid_from AND (d.valid_to IS NULL OR b.bucket < d.valid_to)
GROUP BY depot, truck, day
ORDER BY depot, truck, day
