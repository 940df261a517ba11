-- Daily engine temperature and oil pressure of the trucks in depot02, as the hierarchy was
-- on each reading's day. in_subtree(entity, root, time) is evaluated per row, and Twinlake
-- resolves the subtree to entity ids first, so files holding no truck of the depot are not
-- even opened.
SELECT entity_path(entity) AS truck,
       date_trunc('day', time) AS day,
       round(avg(value) FILTER (WHERE series = 'engine.temperature'), 2) AS avg_engine_c,
       round(max(value) FILTER (WHERE series = 'engine.temperature'), 1) AS max_engine_c,
       round(avg(value) FILTER (WHERE series = 'engine.oil_pressure'), 3) AS avg_oil_bar
FROM measurements
WHERE type = 'telemetry'
  AND series IN ('engine.temperature', 'engine.oil_pressure')
  AND in_subtree(entity, 'main:device:depot02', time)
GROUP BY truck, day
ORDER BY truck, day;
