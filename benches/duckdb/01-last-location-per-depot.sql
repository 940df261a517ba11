SELECT d.name AS depot, t.name AS truck,
       max(CASE WHEN l.series = 'gps.lat' THEN l.value END) AS lat,
       max(CASE WHEN l.series = 'gps.lon' THEN l.value END) AS lon,
       iso(max(l.time)) AS at
FROM latest l
JOIN entities t ON t.entity = l.entity AND t.type = 'Truck'
JOIN entities d ON d.entity = t.parent
WHERE l.type = 'telemetry' AND l.series IN ('gps.lat', 'gps.lon')
GROUP BY d.name, t.name
ORDER BY depot, truck
