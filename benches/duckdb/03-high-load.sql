SELECT l.gateway AS truck, json_extract_string(m.value, '$') AS model, l.value AS load_kg,
       CAST(json_extract(c.value, '$.kg') AS DOUBLE) AS capacity_kg,
       round(100 * l.value / CAST(json_extract(c.value, '$.kg') AS DOUBLE), 1) AS percent
FROM latest l
JOIN twin c ON c.entity = l.entity AND c.fragment = 'capacity'
LEFT JOIN twin m ON m.entity = l.entity AND m.fragment = 'model'
WHERE l.type = 'telemetry' AND l.series = 'load'
  AND l.value >= 0.9 * CAST(json_extract(c.value, '$.kg') AS DOUBLE)
ORDER BY percent DESC, truck
