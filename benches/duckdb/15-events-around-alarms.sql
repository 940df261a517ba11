SELECT p.path AS device, a.type AS alarm, iso(a.time) AS raised_at, e.type AS event,
       (epoch(e.time) - epoch(a.time)) / 60 AS offset_minutes
FROM alarms a
JOIN events e ON e.entity = a.entity
 AND e.time BETWEEN a.time - INTERVAL '5 minutes' AND a.time + INTERVAL '5 minutes'
JOIN entity_paths p ON p.entity = a.entity
WHERE a.status = 'raised'
ORDER BY a.time, device, alarm, offset_minutes, event
