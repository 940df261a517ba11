-- Which firmware version shows more alarms, per device type? Each raise is counted with the
-- device type and the firmware (twin fragment `firmware`) the device had when it was raised,
-- both looked up as of the alarm's time.
SELECT e.type AS device_type,
       json_get_str(f.value, 'version') AS firmware,
       a.type AS alarm,
       count(*) AS raises,
       count(DISTINCT a.entity) AS devices,
       round(count(*) * 1.0 / count(DISTINCT a.entity), 2) AS raises_per_device
FROM alarms a
JOIN entity_history e
  ON e.entity = a.entity
 AND a.time >= e.valid_from AND (e.valid_to IS NULL OR a.time < e.valid_to)
LEFT JOIN twin_history f
  ON f.entity = a.entity AND f.fragment = 'firmware'
 AND a.time >= f.valid_from AND (f.valid_to IS NULL OR a.time < f.valid_to)
WHERE a.status = 'raised'
GROUP BY device_type, firmware, alarm
ORDER BY device_type, firmware, alarm;
