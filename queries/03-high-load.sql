-- Which trucks are loaded to 90 % of their capacity or more? (TSBS IoT "high-load")
-- The load is the newest `load` reading (kg); the capacity comes from the truck's twin
-- fragment `capacity` ({"kg": …}), as the fleet manager set it.
SELECT l.gateway AS truck,
       json_get_str(m.value) AS model,
       l.value AS load_kg,
       json_get_float(c.value, 'kg') AS capacity_kg,
       round(100 * l.value / json_get_float(c.value, 'kg'), 1) AS percent
FROM latest l
JOIN twin c ON c.entity = l.entity AND c.fragment = 'capacity'
LEFT JOIN twin m ON m.entity = l.entity AND m.fragment = 'model'
WHERE l.type = 'telemetry'
  AND l.series = 'load'
  AND l.value >= 0.9 * json_get_float(c.value, 'kg')
ORDER BY percent DESC, truck;
