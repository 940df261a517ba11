WITH readings AS (
    SELECT entity, time, value AS speed,
           lead(time) OVER (PARTITION BY entity ORDER BY time) AS next_time,
           sum(CASE WHEN value > 0 THEN 1 ELSE 0 END)
               OVER (PARTITION BY entity ORDER BY time ROWS UNBOUNDED PRECEDING) AS moves_before
    FROM measurements WHERE type = 'telemetry' AND series = 'gps.speed'
), stops AS (
    SELECT entity, moves_before, min(time) AS began, max(next_time) AS ended
    FROM readings WHERE speed = 0 GROUP BY entity, moves_before)
SELECT d.name AS depot, e.name AS truck, count(*) AS stops_over_10_min,
       max(epoch(s.ended) - epoch(s.began)) / 60 AS longest_minutes
FROM stops s
JOIN entities e ON e.entity = s.entity
JOIN entities d ON d.entity = e.parent
WHERE s.ended - s.began > INTERVAL '10 minutes'
GROUP BY d.name, e.name
ORDER BY depot, truck
