-- How many hours a day does each truck drive? (TSBS IoT "avg-daily-driving-duration")
-- A ten-minute bucket counts as driving when the average speed in it is above 1 km/h.
-- TSBS's reference SQL divides integers (count / 6), which truncates to whole hours; this
-- divides by 6.0, which is what the query means.
WITH buckets AS (
    SELECT entity, date_bin(INTERVAL '10 minutes', time) AS bucket, avg(value) AS speed
    FROM measurements
    WHERE type = 'telemetry' AND series = 'gps.speed'
    GROUP BY entity, bucket
)
SELECT d.name AS depot,
       e.name AS truck,
       date_trunc('day', b.bucket) AS day,
       round(count(*) FILTER (WHERE b.speed > 1) / 6.0, 2) AS driving_hours
FROM buckets b
JOIN entities e ON e.entity = b.entity
JOIN entities d ON d.entity = e.parent
GROUP BY d.name, e.name, day
ORDER BY depot, truck, day;
