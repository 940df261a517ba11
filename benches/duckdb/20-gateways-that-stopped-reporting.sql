WITH last_seen AS (
    SELECT gateway, max(time) AS last_reading FROM latest GROUP BY gateway
), fleet AS (
    SELECT max(last_reading) AS newest FROM last_seen
)
SELECT s.gateway, iso(s.last_reading) AS last_reading,
       round((epoch(f.newest) - epoch(s.last_reading)) / 60, 1) AS silent_minutes
FROM last_seen s CROSS JOIN fleet f
WHERE f.newest - s.last_reading > INTERVAL '30 minutes'
ORDER BY silent_minutes DESC, s.gateway
