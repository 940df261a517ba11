SELECT d.name AS depot, iso(time_bucket(INTERVAL '1 hour', m.time)) AS hour,
       count(*) AS readings, round(avg(m.value), 2) AS avg_temperature,
       round(max(m.value), 2) AS max_temperature
FROM measurements m
JOIN ancestors a ON a.descendant = m.entity
JOIN entities d ON d.entity = a.ancestor AND d.type = 'Depot'
WHERE m.type = 'environment' AND m.series = 'temperature'
  AND m.time >= TIMESTAMP '2026-11-02 06:00:00' AND m.time < TIMESTAMP '2026-11-02 12:00:00'
GROUP BY d.name, hour
ORDER BY depot, hour
