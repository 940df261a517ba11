-- What share of each day were the trucks of a depot and model active? (TSBS IoT
-- "daily-activity") A ten-minute bucket is active when the truck moved in it. TSBS's
-- reference SQL computes count(*) / 144 on integers, which is 0 for any partial day; this
-- computes the fraction.
WITH buckets AS (
    SELECT entity, date_bin(INTERVAL '10 minutes', time) AS bucket, max(value) AS top_speed
    FROM measurements
    WHERE type = 'telemetry' AND series = 'gps.speed'
    GROUP BY entity, bucket
)
SELECT d.name AS depot,
       json_get_str(m.value) AS model,
       date_trunc('day', b.bucket) AS day,
       count(DISTINCT b.entity) AS trucks,
       round(count(*) FILTER (WHERE b.top_speed > 0) / (144.0 * count(DISTINCT b.entity)), 3) AS active_share
FROM buckets b
JOIN entities e ON e.entity = b.entity
JOIN entities d ON d.entity = e.parent
JOIN twin m ON m.entity = e.entity AND m.fragment = 'model'
GROUP BY d.name, model, day
ORDER BY depot, model, day;
