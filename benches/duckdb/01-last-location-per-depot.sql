SELECT json_extract_string(d.value, '$') AS depot, l.gateway AS truck,
       max(CASE WHEN l.series = 'gps.lat' THEN l.value END) AS lat,
       max(CASE WHEN l.series = 'gps.lon' THEN l.value END) AS lon,
       iso(max(l.time)) AS at
FROM latest l
JOIN twin d ON d.entity = l.gateway AND d.fragment = 'depot'
WHERE l.entity = l.gateway AND l.type = 'telemetry' AND l.series IN ('gps.lat', 'gps.lon')
GROUP BY depot, truck
ORDER BY depot, truck
