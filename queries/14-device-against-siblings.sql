-- How does truck0004 behave against its siblings (the other trucks of its depot now)?
-- The post-production feedback loop: each truck's fuel rate, engine temperature and overheat
-- raises, with how many standard deviations the truck is from its siblings' mean.
WITH siblings AS (
    SELECT s.entity AS gateway
    FROM twin s
    JOIN twin me ON me.entity = 'truck0004' AND me.fragment = 'depot' AND s.value = me.value
    WHERE s.fragment = 'depot'
), per_truck AS (
    SELECT m.gateway,
           avg(m.value) FILTER (WHERE m.series = 'fuel.rate') AS fuel_rate,
           avg(m.value) FILTER (WHERE m.series = 'engine.temperature') AS engine_c
    FROM measurements m
    JOIN siblings s ON s.gateway = m.gateway
    WHERE m.type = 'telemetry' AND m.series IN ('fuel.rate', 'engine.temperature')
    GROUP BY m.gateway
), alarms_per_truck AS (
    SELECT gateway, count(*) AS overheats
    FROM alarms
    WHERE type = 'engine_overheat' AND status = 'raised'
    GROUP BY gateway
)
SELECT p.gateway AS truck,
       p.gateway = 'truck0004' AS is_subject,
       round(p.fuel_rate, 2) AS fuel_rate_lph,
       round((p.fuel_rate - avg(p.fuel_rate) OVER ()) / stddev(p.fuel_rate) OVER (), 2) AS fuel_rate_z,
       round(p.engine_c, 2) AS engine_c,
       round((p.engine_c - avg(p.engine_c) OVER ()) / stddev(p.engine_c) OVER (), 2) AS engine_z,
       coalesce(a.overheats, 0) AS overheats
FROM per_truck p
LEFT JOIN alarms_per_truck a ON a.gateway = p.gateway
ORDER BY truck;
