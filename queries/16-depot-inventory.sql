-- What is in depot01 now? Every entity of the trucks whose gateway is in depot01 (the trucks
-- themselves, their sensors and probes, their services), by kind and type, and how deep below
-- the truck.
SELECT coalesce(a.depth, 0) AS depth,
       e.kind,
       e.type,
       count(*) AS entities,
       count(DISTINCT e.gateway) AS trucks
FROM entities e
JOIN twin d ON d.entity = e.gateway AND d.fragment = 'depot'
LEFT JOIN entity_ancestors a ON a.descendant = e.entity AND a.ancestor = e.gateway
WHERE json_get_str(d.value) = 'depot01'
GROUP BY coalesce(a.depth, 0), e.kind, e.type
ORDER BY depth, e.kind, e.type;
