SELECT d.name AS depot, t.name AS truck, json_extract_string(m.value, '$') AS model,
       l.value AS fuel_percent
FROM latest l
JOIN entities t ON t.entity = l.entity
JOIN entities d ON d.entity = t.parent
LEFT JOIN twin m ON m.entity = t.entity AND m.fragment = 'model'
WHERE l.type = 'telemetry' AND l.series = 'fuel.level' AND l.value < 20
ORDER BY fuel_percent, truck
