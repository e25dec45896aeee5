-- Run once by the postgres image on an empty volume (docker-entrypoint-initdb.d).
-- POSTGRES_DB creates `mlflow`; the fleet's retrain job records get their own database.
CREATE DATABASE iris_jobs OWNER iris;
