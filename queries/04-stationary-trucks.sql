-- Which trucks stood still for more than 10 minutes, how often, and for how long at most, by
-- the depot they were in when the stop began? (TSBS IoT "stationary-trucks" asks this for
-- the last 10 minutes only; over the whole history it is a gaps-and-islands question.) A stop
-- runs from the first reading at speed 0 to the next reading in motion; readings in motion
-- close the running count that groups the standstill readings into one stop.
WITH readings AS (
    SELECT gateway, time, value AS speed,
           LEAD(time) OVER (PARTITION BY gateway ORDER BY time) AS next_time,
           SUM(CASE WHEN value > 0 THEN 1 ELSE 0 END)
               OVER (PARTITION BY gateway ORDER BY time ROWS UNBOUNDED PRECEDING) AS moves_before
    FROM measurements
    WHERE type = 'telemetry' AND series = 'gps.speed'
), stops AS (
    SELECT gateway, moves_before, min(time) AS began, max(next_time) AS ended
    FROM readings
    WHERE speed = 0
    GROUP BY gateway, moves_before
)
SELECT json_get_str(d.value) AS depot,
       s.gateway AS truck,
       count(*) AS stops_over_10_min,
       max(date_part('epoch', s.ended) - date_part('epoch', s.began)) / 60 AS longest_minutes
FROM stops s
JOIN gateway_twin_history d
  ON d.gateway = s.gateway AND d.fragment = 'depot'
 AND s.began >= d.valid_from AND (d.valid_to IS NULL OR s.began < d.valid_to)
WHERE s.ended - s.began > INTERVAL '10 minutes'
GROUP BY json_get_str(d.value), s.gateway
ORDER BY depot, truck;
