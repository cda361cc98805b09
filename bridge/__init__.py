"""bridge: Alibaba Cloud EventBridge deliveries to Knative-style subscribers through RabbitMQ."""

__version__ = "0.1.0"
