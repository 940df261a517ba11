WITH buckets AS (
    SELECT entity, time_bucket(INTERVAL '10 minutes', time) AS bucket, avg(value) AS speed
    FROM measurements WHERE type = 'telemetry' AND series = 'gps.speed'
    GROUP BY entity, bucket)
SELECT d.name AS depot, e.name AS truck, iso(date_trunc('day', b.bucket)) AS day,
       round(count(*) FILTER (WHERE b.speed > 1) / 6.0, 2) AS driving_hours
FROM buckets b JOIN entities e ON e.entity = b.entity JOIN entities d ON d.entity = e.parent
GROUP BY d.name, e.name, day
ORDER BY depot, truck, day
