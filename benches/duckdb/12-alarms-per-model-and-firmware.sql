SELECT json_extract_string(m.value, '$') AS model,
       json_extract_string(f.value, '$.version') AS firmware,
       a.type AS alarm, count(*) AS raises, count(DISTINCT a.gateway) AS trucks,
       round(count(*) * 1.0 / count(DISTINCT a.gateway), 2) AS raises_per_truck
FROM alarms a
JOIN twin m ON m.entity = a.gateway AND m.fragment = 'model'
LEFT JOIN twin_history f
  ON f.entity = a.entity AND f.fragment = 'firmware'
 AND a.time >= f.valid_from AND (f.valid_to IS NULL OR a.time < f.valid_to)
WHERE a.status = 'raised'
GROUP BY model, firmware, alarm
ORDER BY model, firmware, alarm
