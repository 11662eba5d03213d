"""`hostaudit index`: the indexer service that moves hostaudit's events from Kafka into Elasticsearch or
OpenSearch, exactly once per `event.id`.

- `settings.py`, `schema.py`   settings/indexer.yaml and the layers over it, checked (pydantic)
- `supervisor.py`              the root actor: one OS process per worker, restarts, /stats and /metrics
- `worker.py`                  a worker process: a consumer actor and a bulk-writer actor
- `consumer.py`                the Kafka consumer group member: batches, pause while the engine is behind, commits
- `writer.py`                  the bulk writer: create with _id = event.id, retries, dead letters
- `bulk.py`                    `_bulk` over HTTP with urllib3 (Elasticsearch and OpenSearch alike)
- `documents.py`               records into bulk documents, or the reason they cannot be indexed
- `dead_letter.py`             the dead-letter topic
- `monitoring.py`              the figures
- `command.py`                 the command line's entry points
"""
