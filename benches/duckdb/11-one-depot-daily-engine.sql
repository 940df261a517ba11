SELECT p.path AS truck, iso(date_trunc('day', m.time)) AS day,
       round(avg(value) FILTER (WHERE series = 'engine.temperature'), 2) AS avg_engine_c,
       round(max(value) FILTER (WHERE series = 'engine.temperature'), 1) AS max_engine_c,
       round(avg(value) FILTER (WHERE series = 'engine.oil_pressure'), 3) AS avg_oil_bar
FROM measurements m
JOIN entity_paths p ON p.entity = m.entity
WHERE m.type = 'telemetry' AND m.series IN ('engine.temperature', 'engine.oil_pressure')
  AND (m.entity = 'main:device:depot02'
       OR m.entity IN (SELECT descendant FROM ancestors WHERE ancestor = 'main:device:depot02'))
GROUP BY truck, day
ORDER BY truck, day
