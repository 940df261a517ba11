WITH statuses AS (
    SELECT entity, status, time, lead(time) OVER (PARTITION BY entity ORDER BY time) AS next_time
    FROM health WHERE status IS NOT NULL)
SELECT p.path AS service, count(*) AS times_down,
       round(sum(epoch(s.next_time) - epoch(s.time)) / 60, 1) AS minutes_down,
       h.status AS status_now
FROM statuses s
JOIN health_current h ON h.entity = s.entity
JOIN entity_paths p ON p.entity = s.entity
WHERE s.status = 'down'
GROUP BY s.entity, p.path, h.status
ORDER BY times_down DESC, service
