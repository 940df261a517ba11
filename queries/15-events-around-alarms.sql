-- What happened on a truck in the 5 minutes before and after each alarm it raised?
-- Every event of the same entity within ±5 minutes of the raise, with its offset.
SELECT entity_path(a.entity) AS device,
       a.type AS alarm,
       a.time AS raised_at,
       e.type AS event,
       (date_part('epoch', e.time) - date_part('epoch', a.time)) / 60 AS offset_minutes
FROM alarms a
JOIN events e
  ON e.entity = a.entity
 AND e.time BETWEEN a.time - INTERVAL '5 minutes' AND a.time + INTERVAL '5 minutes'
WHERE a.status = 'raised'
ORDER BY raised_at, device, alarm, offset_minutes, event;
