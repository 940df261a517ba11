-- Average cold-chain temperature per depot and hour, counting every sensor and probe under
-- the depot it belonged to at the time of the reading (trucks move between depots; the
-- hierarchy through time is `entity_ancestors_history`).
SELECT d.name AS depot,
       date_bin(INTERVAL '1 hour', m.time) AS hour,
       count(*) AS readings,
       round(avg(m.value), 2) AS avg_temperature,
       round(max(m.value), 2) AS max_temperature
FROM measurements m
JOIN entity_ancestors_history a
  ON a.descendant = m.entity
 AND m.time >= a.valid_from AND (a.valid_to IS NULL OR m.time < a.valid_to)
JOIN entities d ON d.entity = a.ancestor AND d.type = 'Depot'
WHERE m.type = 'environment'
  AND m.series = 'temperature'
  AND m.time >= TIMESTAMP '2026-11-02T06:00:00Z'
  AND m.time < TIMESTAMP '2026-11-02T12:00:00Z'
GROUP BY d.name, hour
ORDER BY depot, hour;
