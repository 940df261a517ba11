SELECT json_extract_string(d.value, '$') AS depot, json_extract_string(m.value, '$') AS model,
       CAST(json_extract(c.value, '$.kg') AS DOUBLE) AS capacity_kg,
       round(avg(l.value), 0) AS avg_load_kg,
       round(avg(l.value) / CAST(json_extract(c.value, '$.kg') AS DOUBLE), 3) AS avg_load_share
FROM measurements l
JOIN gateway_twin_history d
  ON d.gateway = l.gateway AND d.fragment = 'depot'
 AND l.time >= d.valid_from AND (d.valid_to IS NULL OR l.time < d.valid_to)
JOIN twin m ON m.entity = l.gateway AND m.fragment = 'model'
JOIN twin c ON c.entity = l.gateway AND c.fragment = 'capacity'
WHERE l.type = 'telemetry' AND l.series = 'load'
GROUP BY depot, model, capacity_kg ORDER BY depot, model
