SELECT e.type AS device_type, json_extract_string(f.value, '$.version') AS firmware,
       a.type AS alarm, count(*) AS raises, count(DISTINCT a.entity) AS devices,
       round(count(*) * 1.0 / count(DISTINCT a.entity), 2) AS raises_per_device
FROM alarms a
JOIN entities e ON e.entity = a.entity
LEFT JOIN twin_history f
  ON f.entity = a.entity AND f.fragment = 'firmware'
 AND a.time >= f.valid_from AND (f.valid_to IS NULL OR a.time < f.valid_to)
WHERE a.status = 'raised'
GROUP BY device_type, firmware, alarm
ORDER BY device_type, firmware, alarm
