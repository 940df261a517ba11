SELECT p.path AS device, l.type, l.series, l.value, iso(l.time) AS time
FROM latest l
JOIN entity_paths p ON p.entity = l.entity
WHERE l.gateway = 'truck0001' AND l.type = 'environment'
ORDER BY device, l.series
