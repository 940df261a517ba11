-- Which firmware version shows more alarms, per truck model? Each raise is counted with the
-- firmware (twin fragment `firmware`) the truck had when it was raised, looked up as of the
-- alarm's time, and the truck's model.
SELECT json_get_str(m.value) AS model,
       json_get_str(f.value, 'version') AS firmware,
       a.type AS alarm,
       count(*) AS raises,
       count(DISTINCT a.gateway) AS trucks,
       round(count(*) * 1.0 / count(DISTINCT a.gateway), 2) AS raises_per_truck
FROM alarms a
JOIN twin m ON m.entity = a.gateway AND m.fragment = 'model'
LEFT JOIN twin_history f
  ON f.entity = a.entity AND f.fragment = 'firmware'
 AND a.time >= f.valid_from AND (f.valid_to IS NULL OR a.time < f.valid_to)
WHERE a.status = 'raised'
GROUP BY json_get_str(m.value), json_get_str(f.value, 'version'), a.type
ORDER BY model, firmware, alarm;
