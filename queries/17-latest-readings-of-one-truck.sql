-- The newest reading of every sensor and probe on truck0001, labelled with its path: the
-- `latest` cache joined to the truck's subtree.
SELECT entity_path(l.entity) AS device,
       l.type,
       l.series,
       l.value,
       l.time
FROM latest l
JOIN descendants('main:device:truck0001') d ON d.entity = l.entity
WHERE l.type = 'environment'
ORDER BY device, l.series;
