SELECT json_extract_string(d.value, '$') AS depot,
       iso(time_bucket(INTERVAL '1 hour', m.time)) AS hour,
       count(*) AS readings, round(avg(m.value), 2) AS avg_temperature,
       round(max(m.value), 2) AS max_temperature
FROM measurements m
JOIN gateway_twin_history d
  ON d.gateway = m.gateway AND d.fragment = 'depot'
 AND m.time >= d.valid_from AND (d.valid_to IS NULL OR m.time < d.valid_to)
WHERE m.type = 'environment' AND m.series = 'temperature'
  AND m.time >= TIMESTAMP '2026-11-02 06:00:00' AND m.time < TIMESTAMP '2026-11-02 12:00:00'
GROUP BY depot, hour
ORDER BY depot, hour
