"""The Kafka stream worker: consumer-group service, its settings and pipeline."""
