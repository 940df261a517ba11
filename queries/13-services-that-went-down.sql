-- Which services went down, how often, for how long in total, and how are they now?
-- Downtime runs from a "down" to the next status the service reported.
WITH statuses AS (
    SELECT entity, status, time,
           LEAD(time) OVER (PARTITION BY entity ORDER BY time) AS next_time
    FROM health
    WHERE status IS NOT NULL
)
SELECT entity_path(s.entity) AS service,
       count(*) AS times_down,
       round(sum(date_part('epoch', s.next_time) - date_part('epoch', s.time)) / 60, 1) AS minutes_down,
       h.status AS status_now
FROM statuses s
JOIN health_current h ON h.entity = s.entity
WHERE s.status = 'down'
GROUP BY s.entity, h.status
ORDER BY times_down DESC, service;
