"""RabbitMQ adapter: connection, topology, confirmed publisher (aiormq underneath)."""
