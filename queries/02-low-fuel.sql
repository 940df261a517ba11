-- Which trucks are low on fuel now? (TSBS IoT "low-fuel": last reading below 10 %, here
-- below 20 % to leave a warning margin), with their depot and model from the twin of their
-- gateway's main device.
SELECT json_get_str(d.value) AS depot,
       l.gateway AS truck,
       json_get_str(m.value) AS model,
       l.value AS fuel_percent
FROM latest l
JOIN twin d ON d.entity = l.gateway AND d.fragment = 'depot'
LEFT JOIN twin m ON m.entity = l.gateway AND m.fragment = 'model'
WHERE l.type = 'telemetry' AND l.series = 'fuel.level' AND l.value < 20
ORDER BY fuel_percent, truck;
