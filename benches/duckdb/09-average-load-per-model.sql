SELECT d.name AS depot, json_extract_string(m.value, '$') AS model,
       CAST(json_extract(c.value, '$.kg') AS DOUBLE) AS capacity_kg,
       round(avg(l.value), 0) AS avg_load_kg,
       round(avg(l.value) / CAST(json_extract(c.value, '$.kg') AS DOUBLE), 3) AS avg_load_share
FROM measurements l
JOIN entities e ON e.entity = l.entity JOIN entities d ON d.entity = e.parent
JOIN twin m ON m.entity = e.entity AND m.fragment = 'model'
JOIN twin c ON c.entity = e.entity AND c.fragment = 'capacity'
WHERE l.type = 'telemetry' AND l.series = 'load'
GROUP BY d.name, model, capacity_kg ORDER BY depot, model
