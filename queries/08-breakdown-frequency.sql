-- How often do trucks of each model break down? (TSBS IoT "breakdown-frequency")
-- A ten-minute bucket is "down" when at least half of its readings report standstill; a
-- breakdown is a bucket that is not down followed by one that is (window function LEAD).
-- TSBS's reference SQL writes count(status = 0) / count(*), but count() counts every non-null
-- value, true or false, and the division is on integers: it is 1 for every bucket. This
-- counts the standstill readings with FILTER and divides as a fraction.
WITH buckets AS (
    SELECT gateway,
           date_bin(INTERVAL '10 minutes', time) AS bucket,
           count(*) FILTER (WHERE value = 0) * 1.0 / count(*) >= 0.5 AS down
    FROM measurements
    WHERE type = 'telemetry' AND series = 'gps.speed'
    GROUP BY gateway, bucket
), transitions AS (
    SELECT gateway, down, LEAD(down) OVER (PARTITION BY gateway ORDER BY bucket) AS next_down
    FROM buckets
)
SELECT json_get_str(m.value) AS model,
       count(*) AS breakdowns,
       count(DISTINCT t.gateway) AS trucks
FROM transitions t
JOIN twin m ON m.entity = t.gateway AND m.fragment = 'model'
WHERE NOT t.down AND t.next_down
GROUP BY model
ORDER BY model;
