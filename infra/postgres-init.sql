-- Prefect uses the database created by POSTGRES_DB (prefect); MLflow gets its own.
CREATE DATABASE mlflow OWNER seqrec;
