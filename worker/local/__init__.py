"""Off the serving path: a local Apache Kafka broker and the demo."""
