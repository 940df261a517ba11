-- What is in depot01 now? Every entity below it (trucks, their sensors and probes, their
-- services), by depth and kind, from the table function descendants().
SELECT d.depth,
       e.kind,
       e.type,
       count(*) AS entities
FROM descendants('main:device:depot01') d
JOIN entities e ON e.entity = d.entity
GROUP BY d.depth, e.kind, e.type
ORDER BY d.depth, e.kind, e.type;
