SELECT p.path AS device, l.type, l.series, l.value, iso(l.time) AS time
FROM latest l
JOIN ancestors a ON a.descendant = l.entity AND a.ancestor = 'main:device:truck0001'
JOIN entity_paths p ON p.entity = l.entity
WHERE l.type = 'environment'
ORDER BY device, l.series
