SELECT count(*), avg(value) FROM measurements
