-- The newest reading of every sensor and probe of truck0001, labelled with its path: the
-- `latest` cache, picked by gateway.
SELECT entity_path(l.entity) AS device,
       l.type,
       l.series,
       l.value,
       l.time
FROM latest l
WHERE l.gateway = 'truck0001' AND l.type = 'environment'
ORDER BY device, l.series;
