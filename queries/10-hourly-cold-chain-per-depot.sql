-- Average cold-chain temperature per depot and hour, counting every sensor and probe of a
-- truck under the depot the truck was in at the time of the reading (trucks move between
-- depots; `gateway_twin_history` says which depot each gateway was in, when).
SELECT json_get_str(d.value) AS depot,
       date_bin(INTERVAL '1 hour', m.time) AS hour,
       count(*) AS readings,
       round(avg(m.value), 2) AS avg_temperature,
       round(max(m.value), 2) AS max_temperature
FROM measurements m
JOIN gateway_twin_history d
  ON d.gateway = m.gateway AND d.fragment = 'depot'
 AND m.time >= d.valid_from AND (d.valid_to IS NULL OR m.time < d.valid_to)
WHERE m.type = 'environment'
  AND m.series = 'temperature'
  AND m.time >= TIMESTAMP '2026-11-02T06:00:00Z'
  AND m.time < TIMESTAMP '2026-11-02T12:00:00Z'
GROUP BY json_get_str(d.value), date_bin(INTERVAL '1 hour', m.time)
ORDER BY depot, hour;
