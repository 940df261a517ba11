-- How loaded do the trucks of each depot and model run, against their capacity? (TSBS IoT
-- "avg-load") Load readings in kg, each with the depot its truck was in when it was taken;
-- capacity from the twin fragment `capacity`.
SELECT json_get_str(d.value) AS depot,
       json_get_str(m.value) AS model,
       json_get_float(c.value, 'kg') AS capacity_kg,
       round(avg(l.value), 0) AS avg_load_kg,
       round(avg(l.value) / json_get_float(c.value, 'kg'), 3) AS avg_load_share
FROM measurements l
JOIN gateway_twin_history d
  ON d.gateway = l.gateway AND d.fragment = 'depot'
 AND l.time >= d.valid_from AND (d.valid_to IS NULL OR l.time < d.valid_to)
JOIN twin m ON m.entity = l.gateway AND m.fragment = 'model'
JOIN twin c ON c.entity = l.gateway AND c.fragment = 'capacity'
WHERE l.type = 'telemetry' AND l.series = 'load'
GROUP BY json_get_str(d.value), json_get_str(m.value), json_get_float(c.value, 'kg')
ORDER BY depot, model;
