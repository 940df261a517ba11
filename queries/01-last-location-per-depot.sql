-- Where is every truck now, by depot? (TSBS IoT "last-loc")
-- The newest position of each truck from the `latest` cache (no history is scanned), with the
-- depot it belongs to now: the `depot` twin fragment of its gateway's main device.
SELECT json_get_str(d.value) AS depot,
       l.gateway AS truck,
       max(CASE WHEN l.series = 'gps.lat' THEN l.value END) AS lat,
       max(CASE WHEN l.series = 'gps.lon' THEN l.value END) AS lon,
       max(l.time) AS at
FROM latest l
JOIN twin d ON d.entity = l.gateway AND d.fragment = 'depot'
WHERE l.entity = l.gateway AND l.type = 'telemetry' AND l.series IN ('gps.lat', 'gps.lon')
GROUP BY json_get_str(d.value), l.gateway
ORDER BY depot, truck;
