-- How many hours a day does each truck drive, by the depot it was in? (TSBS IoT
-- "avg-daily-driving-duration") A ten-minute bucket counts as driving when the average speed
-- in it is above 1 km/h, and with the depot its truck was in when the bucket began. TSBS's
-- reference SQL divides integers (count / 6), which truncates to whole hours; this divides by
-- 6.0, which is what the query means.
WITH buckets AS (
    SELECT gateway, date_bin(INTERVAL '10 minutes', time) AS bucket, avg(value) AS speed
    FROM measurements
    WHERE type = 'telemetry' AND series = 'gps.speed'
    GROUP BY gateway, bucket
)
SELECT json_get_str(d.value) AS depot,
       b.gateway AS truck,
       date_trunc('day', b.bucket) AS day,
       round(count(*) FILTER (WHERE b.speed > 1) / 6.0, 2) AS driving_hours
FROM buckets b
JOIN gateway_twin_history d
  ON d.gateway = b.gateway AND d.fragment = 'depot'
 AND b.bucket >= d.valid_from AND (d.valid_to IS NULL OR b.bucket < d.valid_to)
GROUP BY json_get_str(d.value), b.gateway, date_trunc('day', b.bucket)
ORDER BY depot, truck, day;
