-- Runs once, when the PostgreSQL volume is first initialised (POSTGRES_DB creates icans_mlflow).
-- icans_mlflow: MLflow's backend store (tables created by `mlflow server`).
-- icans_service: the service store, API keys and audit trail (tables created by its migrations).
CREATE DATABASE icans_service OWNER icans;
