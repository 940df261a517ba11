-- What share of each day were the trucks of a depot and model active? (TSBS IoT
-- "daily-activity") A ten-minute bucket is active when the truck moved in it, and counts for
-- the depot its truck was in then. TSBS's reference SQL computes count(*) / 144 on integers,
-- which is 0 for any partial day; this computes the fraction.
WITH buckets AS (
    SELECT gateway, date_bin(INTERVAL '10 minutes', time) AS bucket, max(value) AS top_speed
    FROM measurements
    WHERE type = 'telemetry' AND series = 'gps.speed'
    GROUP BY gateway, bucket
)
SELECT json_get_str(d.value) AS depot,
       json_get_str(m.value) AS model,
       date_trunc('day', b.bucket) AS day,
       count(DISTINCT b.gateway) AS trucks,
       round(count(*) FILTER (WHERE b.top_speed > 0) / (144.0 * count(DISTINCT b.gateway)), 3) AS active_share
FROM buckets b
JOIN gateway_twin_history d
  ON d.gateway = b.gateway AND d.fragment = 'depot'
 AND b.bucket >= d.valid_from AND (d.valid_to IS NULL OR b.bucket < d.valid_to)
JOIN twin m ON m.entity = b.gateway AND m.fragment = 'model'
GROUP BY json_get_str(d.value), json_get_str(m.value), date_trunc('day', b.bucket)
ORDER BY depot, model, day;
