-- Daily engine temperature and oil pressure of the trucks of depot02, each reading counted
-- only while its truck was in depot02 (the depot as of the reading, from
-- `gateway_twin_history`).
SELECT m.gateway AS truck,
       date_trunc('day', m.time) AS day,
       round(avg(m.value) FILTER (WHERE m.series = 'engine.temperature'), 2) AS avg_engine_c,
       round(max(m.value) FILTER (WHERE m.series = 'engine.temperature'), 1) AS max_engine_c,
       round(avg(m.value) FILTER (WHERE m.series = 'engine.oil_pressure'), 3) AS avg_oil_bar
FROM measurements m
JOIN gateway_twin_history d
  ON d.gateway = m.gateway AND d.fragment = 'depot'
 AND m.time >= d.valid_from AND (d.valid_to IS NULL OR m.time < d.valid_to)
WHERE json_get_str(d.value) = 'depot02'
  AND m.type = 'telemetry'
  AND m.series IN ('engine.temperature', 'engine.oil_pressure')
GROUP BY m.gateway, date_trunc('day', m.time)
ORDER BY truck, day;
