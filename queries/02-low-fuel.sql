-- Which trucks are low on fuel now? (TSBS IoT "low-fuel": last reading below 10 %, here
-- below 20 % to leave a warning margin), with their depot and model from the twin.
SELECT d.name AS depot,
       t.name AS truck,
       json_get_str(m.value) AS model,
       l.value AS fuel_percent
FROM latest l
JOIN entities t ON t.entity = l.entity
JOIN entities d ON d.entity = t.parent
LEFT JOIN twin m ON m.entity = t.entity AND m.fragment = 'model'
WHERE l.type = 'telemetry' AND l.series = 'fuel.level' AND l.value < 20
ORDER BY fuel_percent, truck;
