SELECT json_extract_string(d.value, '$') AS depot, l.gateway AS truck,
       json_extract_string(m.value, '$') AS model, l.value AS fuel_percent
FROM latest l
JOIN twin d ON d.entity = l.gateway AND d.fragment = 'depot'
LEFT JOIN twin m ON m.entity = l.gateway AND m.fragment = 'model'
WHERE l.type = 'telemetry' AND l.series = 'fuel.level' AND l.value < 20
ORDER BY fuel_percent, truck
