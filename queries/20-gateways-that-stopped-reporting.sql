-- Which gateways have stopped reporting? Each gateway's newest reading (from the `latest`
-- cache, no history is scanned) against the newest of the whole fleet: silent for more than
-- 30 minutes while the others went on.
WITH last_seen AS (
    SELECT gateway, max(time) AS last_reading FROM latest GROUP BY gateway
), fleet AS (
    SELECT max(last_reading) AS newest FROM last_seen
)
SELECT s.gateway,
       s.last_reading,
       round((date_part('epoch', f.newest) - date_part('epoch', s.last_reading)) / 60, 1) AS silent_minutes
FROM last_seen s CROSS JOIN fleet f
WHERE f.newest - s.last_reading > INTERVAL '30 minutes'
ORDER BY silent_minutes DESC, s.gateway;
