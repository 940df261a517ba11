SELECT iso(time_bucket(INTERVAL '1 hour', time)) AS hour, type AS alarm,
       count(DISTINCT gateway) AS trucks, iso(min(time)) AS first_raised,
       iso(max(time)) AS last_raised
FROM alarms
WHERE status = 'raised'
GROUP BY time_bucket(INTERVAL '1 hour', time), type
HAVING count(DISTINCT gateway) >= 2
ORDER BY hour, alarm
