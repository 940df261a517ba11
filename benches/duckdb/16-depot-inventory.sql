SELECT a.depth, e.kind, e.type, count(*) AS entities
FROM ancestors a JOIN entities e ON e.entity = a.descendant
WHERE a.ancestor = 'main:device:depot01'
GROUP BY a.depth, e.kind, e.type
ORDER BY a.depth, e.kind, e.type
