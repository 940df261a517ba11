-- Which trucks have driven without a 20-minute rest in the last 4 hours? (TSBS IoT
-- "long-driving-sessions"): of the 24 ten-minute buckets, more than 22 with an average
-- speed above 1 km/h.
WITH now AS (
    SELECT max(time) AS t FROM measurements WHERE type = 'telemetry' AND series = 'gps.speed'
), buckets AS (
    SELECT m.gateway, date_bin(INTERVAL '10 minutes', m.time) AS bucket, avg(m.value) AS speed
    FROM measurements m CROSS JOIN now
    WHERE m.type = 'telemetry'
      AND m.series = 'gps.speed'
      AND m.time > now.t - INTERVAL '4 hours'
    GROUP BY m.gateway, bucket
)
SELECT b.gateway AS truck,
       count(*) FILTER (WHERE b.speed > 1) AS driving_buckets
FROM buckets b
GROUP BY b.gateway
HAVING count(*) FILTER (WHERE b.speed > 1) > 22
ORDER BY truck;
