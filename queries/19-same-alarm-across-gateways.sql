-- Which alarm did several trucks raise in the same hour? A fleet-wide cause (a heat wave, a
-- bad fuel delivery, a firmware bug) shows as the same alarm on many gateways at once.
SELECT date_bin(INTERVAL '1 hour', time) AS hour,
       type AS alarm,
       count(DISTINCT gateway) AS trucks,
       min(time) AS first_raised,
       max(time) AS last_raised
FROM alarms
WHERE status = 'raised'
GROUP BY date_bin(INTERVAL '1 hour', time), type
HAVING count(DISTINCT gateway) >= 2
ORDER BY hour, alarm;
