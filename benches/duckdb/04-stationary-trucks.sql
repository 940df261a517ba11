WITH readings AS (
    SELECT gateway, time, value AS speed,
           lead(time) OVER (PARTITION BY gateway ORDER BY time) AS next_time,
           sum(CASE WHEN value > 0 THEN 1 ELSE 0 END)
               OVER (PARTITION BY gateway ORDER BY time ROWS UNBOUNDED PRECEDING) AS moves_before
    FROM measurements WHERE type = 'telemetry' AND series = 'gps.speed'
), stops AS (
    SELECT gateway, moves_before, min(time) AS began, max(next_time) AS ended
    FROM readings WHERE speed = 0 GROUP BY gateway, moves_before)
SELECT json_extract_string(d.value, '$') AS depot, s.gateway AS truck,
       count(*) AS stops_over_10_min,
       max(epoch(s.ended) - epoch(s.began)) / 60 AS longest_minutes
FROM stops s
JOIN gateway_twin_history d
  ON d.gateway = s.gateway AND d.fragment = 'depot'
 AND s.began >= d.valid_from AND (d.valid_to IS NULL OR s.began < d.valid_to)
WHERE s.ended - s.began > INTERVAL '10 minutes'
GROUP BY depot, truck
ORDER BY depot, truck
